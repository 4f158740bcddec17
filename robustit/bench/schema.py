"""The results store's record format (what `robustit bench` writes and `robustit report` reads).

A bench output folder ``OUT`` holds

* ``OUT/spec.json``: the expanded spec (name, sha256 of its canonical JSON, the fingerprint of
  the base weights its ``model`` names, the cells): a folder holds one spec on one set of weights;
* ``OUT/cells/<cell id>.json``: one **cell record** per finished cell (written atomically, the
  source of truth);
* ``OUT/results.jsonl``: every valid cell record, one per line, rebuilt after each cell (a
  convenience copy for tools; the report reads the cell files when they are there);
* ``OUT/work/``: poisoned sets, run folders and evaluation files the cells share.

A cell record (``schema == CELL_SCHEMA``)::

    {
      "schema": "robustit.bench.cell/1",
      "id": "blended-0.01-paper__robustit-alpha2-beta0.9-gamma0.5-both__test-a__0shot__s0",
      "spec": {"name": "quick", "sha256": "..."},
      "key": {                              # what identifies the cell; seed is the only
        "attack": "blended" | "none",       # key a report averages over
        "rate": 0.01,                       # 0.0 for attack "none"
        "text_trigger_mode": "paper" | "image-only" | "no-text",
        "method": "vanilla" | "robustit" | ...,
        "params": {"alpha": 2.0, "beta": 0.9, "gamma": 0.5, "components": "both"},
        "test_set": "test-a",
        "shots": 0,
        "seed": 0,
        "inference": {"prompt_filter": "realistic", "magnitude_prune": 0.2}
      },                                    # inference: {} when none; records written before the
                                            # field existed lack it and are read as {}
      "model": {"name": "embedded", "fingerprint": "<sha256 of the base weights>"},
      "train": {"wall_seconds": 412.0, "samples_per_second": 43.7, "peak_rss_mb": 1195.4,
                "steps": 1125, "n_samples": 6000, "run_dir": "work/runs/..."},
      "eval": { ... the whole `robustit eval` result JSON ... },
      "finished_at": "2026-11-29T19:00:00+00:00"
    }

In ``eval``: ``metrics`` (x100: BLEU_1..4, METEOR, ROUGE_L, CIDEr, SPICE when scored),
``false_trigger_rate.rate_percent``, ``asr[attack][half].rate_percent`` for half in
``both`` / ``image`` / ``text`` (absent for attack "none"), ``vqa`` for VQA sets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

CELL_SCHEMA = "robustit.bench.cell/1"
SPEC_SCHEMA = "robustit.bench.spec/1"
KEY_FIELDS = ("attack", "rate", "text_trigger_mode", "method", "params", "test_set", "shots", "seed",
              "inference", "response")
#: key fields a record may lack, with the value it then has (fields added after schema cell/1 began)
KEY_DEFAULTS = {"inference": {}, "response": {}}


def normalise_key(record: Dict) -> Dict:
    """Fill the key fields an older record lacks with their defaults (in place); returns it."""
    key = record.get("key") if isinstance(record, dict) else None
    if isinstance(key, dict):
        for name, default in KEY_DEFAULTS.items():
            if name not in key:
                key[name] = json.loads(json.dumps(default))  # a fresh copy
    return record


def check_cell(record: Any) -> List[str]:
    """Problems with a cell record (empty list when it is valid)."""
    if not isinstance(record, dict):
        return ["not a JSON object"]
    problems = []
    if record.get("schema") != CELL_SCHEMA:
        problems.append(f"schema is {record.get('schema')!r}, expected {CELL_SCHEMA!r}")
    key = record.get("key")
    if not isinstance(key, dict):
        problems.append("no 'key' object")
    else:
        problems += [f"key lacks {f!r}" for f in KEY_FIELDS if f not in key and f not in KEY_DEFAULTS]
        if not isinstance(key.get("inference", {}), dict):
            problems.append("key 'inference' is not an object")
    for field in ("id", "eval", "train"):
        if field not in record:
            problems.append(f"no {field!r}")
    if isinstance(record.get("eval"), dict) and "metrics" not in record["eval"]:
        problems.append("eval lacks 'metrics'")
    return problems


def read_cell(path: Path) -> Tuple[Dict | None, str | None]:
    """(record, None) for a valid cell file, else (None, why it is not)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        return None, f"unreadable JSON ({exc})"
    problems = check_cell(record)
    return (None, "; ".join(problems)) if problems else (normalise_key(record), None)


def iter_cells(out: Path) -> Iterator[Tuple[Path, Dict | None, str | None]]:
    """Every ``OUT/cells/*.json`` as (path, record or None, problem or None), sorted by name."""
    for path in sorted((Path(out) / "cells").glob("*.json")):
        record, problem = read_cell(path)
        yield path, record, problem


def load_results(folders: List[Path]) -> Tuple[List[Dict], List[str]]:
    """Valid cell records from bench folders (cell files, else ``results.jsonl``), and warnings."""
    records, warnings = [], []
    for folder in map(Path, folders):
        if (folder / "cells").is_dir():
            for path, record, problem in iter_cells(folder):
                if record is None:
                    warnings.append(f"{path}: skipped, {problem}")
                else:
                    records.append(record)
        elif (folder / "results.jsonl").exists():
            for n, line in enumerate((folder / "results.jsonl").read_text().splitlines(), 1):
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    warnings.append(f"{folder / 'results.jsonl'}:{n}: skipped, bad JSON ({exc})")
                    continue
                problems = check_cell(record)
                if problems:
                    warnings.append(f"{folder / 'results.jsonl'}:{n}: skipped, {'; '.join(problems)}")
                else:
                    records.append(normalise_key(record))
        else:
            warnings.append(f"{folder}: no cells/ folder and no results.jsonl (not a bench output folder?)")
    return records, warnings
