"""The run's configuration as the report shows it: specs, versions, machines, git commits.

Everything comes from the results themselves (each cell's ``spec`` and ``eval.provenance``,
and ``OUT/spec.json``), never from the machine that renders the report. Values that differ
between cells are all listed with their cell counts, so a mixed run cannot pass for a clean one.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from .aggregate import lookup


def _counted(values: Sequence[Any]) -> str:
    """``a`` when all cells agree, else ``a (3 cells); b (1 cell)``."""
    counts = Counter("-" if v is None else str(v) for v in values)
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{v} ({n} cell{'s' if n != 1 else ''})" for v, n in counts.most_common())


def _versions(record: Dict) -> str:
    versions = lookup(record, "eval", "provenance", "versions") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v)


def config_rows(records: Sequence[Dict]) -> List[Tuple[str, str]]:
    """(field, value) rows summarising the configuration of every cell."""
    fields = {
        "spec name": lambda r: lookup(r, "spec", "name"),
        "spec sha256": lambda r: lookup(r, "spec", "sha256"),
        "git commit": lambda r: lookup(r, "eval", "provenance", "git_commit"),
        "versions": _versions,
        "python": lambda r: lookup(r, "eval", "provenance", "python"),
        "machine": lambda r: lookup(r, "eval", "provenance", "machine", "platform"),
        "CPU count": lambda r: lookup(r, "eval", "provenance", "machine", "cpu_count"),
        "torch threads": lambda r: lookup(r, "eval", "provenance", "machine", "torch_threads"),
        "ASR matcher": lambda r: json.dumps(lookup(r, "eval", "matcher"), sort_keys=True)
        if lookup(r, "eval", "matcher") else None,
        "test samples": lambda r: lookup(r, "eval", "counts", "samples"),
    }
    rows = [("cells", str(len(records)))]
    rows += [(name, _counted([get(r) for r in records])) for name, get in fields.items()]
    finished = sorted(r.get("finished_at") for r in records if r.get("finished_at"))
    if finished:
        rows.append(("finished", f"{finished[0]} .. {finished[-1]}"))
    return rows


def spec_files(results_dirs: Sequence[str | Path]) -> List[Tuple[str, Dict]]:
    """(folder, parsed ``spec.json``) for each results folder that has a readable one."""
    out = []
    for folder in map(Path, results_dirs):
        try:
            out.append((str(folder), json.loads((folder / "spec.json").read_text())))
        except (OSError, ValueError):
            continue
    return out
