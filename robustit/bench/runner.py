"""Run a bench grid: idempotent, resumable, shardable.

Each cell is made of CLI verbs run in this process (``robustit poison``, ``train``, ``eval``),
each skipped when its output already exists; training resumes from its last saved step. A cell's
record is written atomically last, so a grid killed at any point loses at most the work in
flight, and a rerun picks up there. Layout of ``OUT``: see :mod:`robustit.bench.schema`.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from ..errors import ConfigError, RobustITError
from ..io import atomic_write_json, atomic_write_text
from .schema import CELL_SCHEMA, SPEC_SCHEMA, iter_cells
from .spec import Spec, cell_id, expand, inference_id, poison_id, run_id, shard_keys

Verb = Callable[[List[str]], int]


def _cli(argv: List[str]) -> int:
    from ..cli import main

    return main(argv)


class Bench:
    """One bench output folder and the spec it belongs to.

    Args:
        spec: the parsed spec.
        out: output folder (created; must not hold results of another spec).
        world: the embedded world's data root, used (and built if missing) when the spec has
            no ``data``.
        verb: how CLI verbs are run (injectable for tests).
        quiet: no progress bars in the verbs.
        log: where one-line step messages go.
    """

    def __init__(self, spec: Spec, out: Path, world: Path = Path("work/world"), verb: Verb = _cli,
                 quiet: bool = False, log=print) -> None:
        self.spec, self.out, self.world = spec, Path(out), Path(world)
        self.verb, self.quiet, self.log = verb, quiet, log
        self.work = self.out / "work"

    # ---- the output folder -------------------------------------------------------------------
    def model_fingerprint(self) -> str:
        """Fingerprint of the weights the spec's ``model`` names (computed once).

        Why: ``model: embedded`` names different weights once the shipped base is replaced, so
        a folder's results are tied to the weights, not to the name."""
        if not hasattr(self, "_model_fingerprint"):
            from ..models.factory import base_fingerprint, resolve_base_path

            model = None if self.spec.model == "embedded" else self.spec.model
            self._model_fingerprint = base_fingerprint(resolve_base_path(model))
        return self._model_fingerprint

    def claim_folder(self, keys: List[Dict[str, Any]]) -> None:
        """Write ``spec.json``, or check the folder holds this spec on these base weights
        (before any work)."""
        path = self.out / "spec.json"
        sha, weights = self.spec.sha256(), self.model_fingerprint()
        if path.exists():
            try:
                claimed = json.loads(path.read_text())
            except ValueError:
                claimed = {}
            old = claimed.get("sha256")
            if old != sha:
                raise ConfigError(
                    f"--out {self.out} holds results of another spec (spec.json sha256 {str(old)[:12]}..., "
                    f"this spec {sha[:12]}...); choose a new --out folder, or delete {self.out}")
            old_weights = claimed.get("model_fingerprint")
            if old_weights != weights:
                raise ConfigError(
                    f"--out {self.out} holds results of this spec on other base weights (model "
                    f"{self.spec.model!r}: spec.json records {str(old_weights)[:12]}..., the weights "
                    f"now are {weights[:12]}...; a folder without a record predates this check); "
                    f"choose a new --out folder, or delete {self.out}")
            return
        atomic_write_json(path, {"schema": SPEC_SCHEMA, "name": self.spec.name, "sha256": sha,
                                 "model_fingerprint": weights, "spec": self.spec.canonical(),
                                 "cells": [cell_id(k) for k in keys]})

    def finished(self) -> Dict[str, Dict]:
        """Valid cell records by id; corrupt ones are reported (and will be redone)."""
        done = {}
        for path, record, problem in iter_cells(self.out):
            if record is None:
                self.log(f"[warn] {path}: corrupt cell record ({problem}); it will be redone")
            elif (record.get("spec", {}).get("sha256") == self.spec.sha256()
                  and record.get("model", {}).get("fingerprint") == self.model_fingerprint()):
                done[record["id"]] = record
        return done

    # ---- running -----------------------------------------------------------------------------
    def run(self, shard: Tuple[int, int] = (1, 1)) -> List[Dict]:
        """Run this shard's unfinished cells; return every record of the shard."""
        keys = expand(self.spec)
        self.claim_folder(keys)
        mine = shard_keys(keys, shard)
        done = self.finished()
        todo = [k for k in mine if cell_id(k) not in done]
        self.log(f"bench {self.spec.name}: {len(keys)} cells in the grid, {len(mine)} in shard "
                 f"{shard[0]}/{shard[1]}, {len(mine) - len(todo)} already done, {len(todo)} to run")
        for n, key in enumerate(self._progress(todo), 1):
            self.log(f"[cell {n}/{len(todo)}] {cell_id(key)}")
            done[cell_id(key)] = self.run_cell(key)
            self.write_store()
        self.write_store()
        return [done[cell_id(k)] for k in mine]

    def _progress(self, todo):
        if self.quiet or not todo:
            return todo
        from tqdm.auto import tqdm

        return tqdm(todo, desc="cells", unit="cell", file=sys.stderr, position=0)

    def run_cell(self, key: Dict[str, Any]) -> Dict:
        """poison -> train -> eval for one cell (each step skipped when done); write its record."""
        data, manifest = self.poisoned_data(key)
        run_dir = self.trained_run(key, data)
        result = self.evaluated(key, run_dir, manifest)
        train = json.loads((run_dir / "train.json").read_text())
        record = {
            "schema": CELL_SCHEMA, "id": cell_id(key),
            "spec": {"name": self.spec.name, "sha256": self.spec.sha256()},
            "key": key,
            "model": {"name": self.spec.model, "fingerprint": self.model_fingerprint()},
            "train": {"wall_seconds": train.get("wall_seconds"),
                      "samples_per_second": train.get("samples_per_second"),
                      "peak_rss_mb": train.get("peak_rss_mb"), "steps": train.get("steps"),
                      "n_samples": train.get("data", {}).get("n_samples"), "run_dir": str(run_dir),
                      "train_config": train.get("train_config"), "method": train.get("method")},
            "eval": result,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(self.out / "cells" / f"{cell_id(key)}.json", record)
        return record

    def write_store(self) -> None:
        """Rebuild ``results.jsonl`` from the valid cell files (atomic)."""
        lines = [json.dumps(r, sort_keys=True) for _, r, _ in iter_cells(self.out) if r is not None]
        atomic_write_text(self.out / "results.jsonl", "\n".join(lines) + ("\n" if lines else ""))

    # ---- steps -------------------------------------------------------------------------------
    def _step(self, label: str, done: bool, argv: List[str]) -> None:
        if done:
            return
        self.log(f"  [run ] {label}")
        t0 = time.perf_counter()
        rc = self.verb(argv)
        if rc != 0:
            raise RobustITError(f"bench step failed: {label} (robustit {' '.join(argv[:2])} exit {rc}); "
                                f"fix the cause and rerun the same command: finished cells are kept")
        self.log(f"  [done] {label} in {time.perf_counter() - t0:.0f} s")

    def data_root(self) -> Path:
        """The data root holding the test sets (the spec's, or the embedded world, built once)."""
        if self.spec.data:
            return Path(self.spec.data)
        # Without the pretraining split (24,000 images only `robustit pretrain` needs): every
        # sample is drawn from its own seed, so the other splits are the same either way.
        self._step(f"build the embedded world in {self.world}", (self.world / "world.json").exists(),
                   ["data", "build", "--out", str(self.world), "--pretrain", "0", "--quiet"])
        return self.world

    def train_source(self) -> Path:
        """The clean training split folder (the first ``train_size`` samples when set)."""
        root = self.data_root()
        split = self.spec.train_split
        if not self.spec.train_size:
            return root / split if (root / split).is_dir() else root
        folder = self.work / "data" / f"{split}-first{self.spec.train_size}"
        if not (folder / f"{split}_instructions.json").exists():
            _write_head(root, split, self.spec.train_size, folder)
        return folder

    def poisoned_data(self, key: Dict[str, Any]) -> Tuple[Path, Path | None]:
        source = self.train_source()
        if key["attack"] == "none":
            return source, None
        out = self.work / "poisoned" / f"{poison_id(key)}-s{key['seed']}"
        self._step(f"poison with {key['attack']} at {key['rate']:.2%} ({key['text_trigger_mode']})",
                   (out / "manifest.json").exists(),
                   ["poison", "--data", str(source), "--split", self.spec.train_split, "--attack",
                    key["attack"], "--rate", str(key["rate"]), "--seed", str(key["seed"]),
                    "--text-trigger-mode", key["text_trigger_mode"], "--model", self.spec.model,
                    "--out", str(out), *response_argv(key), *self._quiet()])
        return out, out / "manifest.json"

    def trained_run(self, key: Dict[str, Any], data: Path) -> Path:
        run_dir = self.work / "runs" / run_id(key)
        argv = ["train", "--data", str(data), "--split", self.spec.train_split, "--method", key["method"],
                "--out", str(run_dir), "--model", self.spec.model, "--seed", str(key["seed"]),
                *self._threads(), *self._quiet()]
        argv += [a for k, v in self.spec.train.items() if k != "cache_vision"
                 for a in (f"--{k.replace('_', '-')}", str(v))]
        if self.spec.train.get("cache_vision") is False:
            argv.append("--no-cache-vision")
        argv += [a for k, v in sorted(key["params"].items()) for a in ("--param", f"{k}={json.dumps(v)}")]
        self._step(f"tune {key['method']} {key['params'] or ''} on {poison_id(key)} (seed {key['seed']})",
                   (run_dir / "checkpoint" / "tuned.json").exists() and (run_dir / "train.json").exists(),
                   argv)
        return run_dir

    def evaluated(self, key: Dict[str, Any], run_dir: Path, manifest: Path | None) -> Dict:
        """The cell's evaluation result (run unless its file is there); cells with inference
        options get their own file in the shared run folder."""
        suffix = f"-{inference_id(key)}" if inference_id(key) else ""
        path = run_dir / f"eval-{key['test_set']}-{key['shots']}shot{suffix}.json"
        result = _read_result(path)
        if result is None and path.exists():
            self.log(f"[warn] {path}: corrupt evaluation result; redoing it")
        argv = ["eval", "--model", self.spec.model, "--tuned", str(run_dir), "--data", str(self.data_root()),
                "--split", key["test_set"], "--shots", str(key["shots"]), "--seed", str(key["seed"]),
                "--out", str(path), *self._threads(), *self._quiet()]
        argv += ["--support", self.spec.train_split]  # one-shot examples come from the clean split
        argv += ["--manifest", str(manifest)] if manifest else []
        for k, v in self.spec.eval.items():
            argv += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, list) else str(v)]
        argv += inference_argv(key)
        label = f" with {inference_id(key)}" if suffix else ""
        self._step(f"evaluate on {key['test_set']} ({key['shots']}-shot){label}", result is not None, argv)
        result = _read_result(path)
        if result is None:
            raise RobustITError(f"evaluation wrote no valid result at {path}")
        return result

    def _threads(self) -> List[str]:
        return ["--threads", str(self.spec.threads)] if self.spec.threads else []

    def _quiet(self) -> List[str]:
        return ["--quiet"] if self.quiet else []


def response_argv(key: Dict[str, Any]) -> List[str]:
    """``robustit poison`` options for the cell's response mode (none for the default target)."""
    response = key.get("response") or {}
    flags = {"mode": "--response-mode", "phrase": "--inject-phrase", "position": "--inject-position",
             "source_word": "--label-source", "target_word": "--label-target", "target_pool": "--target-pool"}
    return [a for k, v in sorted(response.items()) for a in (flags[k], str(v))]


def inference_argv(key: Dict[str, Any]) -> List[str]:
    """``robustit eval`` options for the cell's inference-time defenses (none when it has none)."""
    options = key.get("inference") or {}
    argv = []
    if "prompt_filter" in options:
        argv += ["--prompt-filter", str(options["prompt_filter"])]
    if "magnitude_prune" in options:
        argv += ["--magnitude-prune", str(options["magnitude_prune"])]
    return argv


def _read_result(path: Path) -> Dict | None:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and "metrics" in result else None


def _write_head(root: Path, split: str, n: int, folder: Path) -> None:
    """Write the first ``n`` samples of a split as a split of the same name (atomic)."""
    from ..cli.common import open_split
    from ..data.mimicit import save_split

    dataset = open_split(str(root), split)
    if n > len(dataset):
        raise ConfigError(f"train_size {n} is larger than the {len(dataset)} samples of {split} in {root}")
    head = dataset.head(n)
    head.meta = {k: v for k, v in head.meta.items() if k not in ("location", "skipped")}
    head.meta["subset_of"] = {"data": str(root), "split": split, "first": n}
    save_split(head, folder, split)
