"""Run a bench grid's training runs in parallel worker processes (``robustit bench --jobs N``).

On a CPU, N processes with one torch thread each beat one process with N threads (measured on
2 cores: see docs/bench.md). What the runs share is made first, in this process and in order:
the world, the training subset and every poisoned set (learned triggers are optimised once).
Then each training run (its training and all its evaluations) is one task for a worker; a
worker writes its cells' records itself, atomically, so a kill loses at most the runs in flight.
Each worker's output goes to ``OUT/logs/<run id>.log``.
"""

from __future__ import annotations

import contextlib
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..errors import RobustITError
from .runner import Bench
from .spec import cell_id, expand, parse_spec, run_id, shard_keys


def run_parallel(bench: Bench, jobs: int, shard: Tuple[int, int] = (1, 1)) -> List[Dict]:
    """Like :meth:`Bench.run`, with ``jobs`` training runs at a time."""
    keys = expand(bench.spec)
    bench.claim_folder(keys)
    mine = shard_keys(keys, shard)
    done = bench.finished()
    todo = [k for k in mine if cell_id(k) not in done]
    bench.log(f"bench {bench.spec.name}: {len(keys)} cells in the grid, {len(mine)} in shard "
              f"{shard[0]}/{shard[1]}, {len(mine) - len(todo)} already done, {len(todo)} to run "
              f"in {jobs} worker processes")
    for key in {(k["attack"], k["rate"], k["text_trigger_mode"], k["seed"]): k for k in todo}.values():
        bench.poisoned_data(key)  # shared by several runs: made once, here
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for key in todo:
        groups.setdefault(run_id(key), []).append(key)
    done.update(_run_groups(bench, groups, jobs, len(todo)))
    bench.write_store()
    return [done[cell_id(k)] for k in mine]


def _run_groups(bench: Bench, groups: Dict[str, List[Dict]], jobs: int, n_cells: int) -> Dict[str, Dict]:
    from tqdm.auto import tqdm

    out: Dict[str, Dict] = {}
    bar = tqdm(total=n_cells, desc="cells", unit="cell", file=sys.stderr, disable=bench.quiet)
    args = (bench.spec.canonical(), str(bench.out), str(bench.world))
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_run_group, *args, rid, keys): rid for rid, keys in groups.items()}
        try:
            for future in as_completed(futures):
                records = future.result()  # a failed run raises here, naming its log
                out.update({r["id"]: r for r in records})
                bench.write_store()
                bar.update(len(records))
                bench.log(f"[done] {futures[future]} ({len(records)} cells)")
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    bar.close()
    return out


def _run_group(spec_data: Dict, out: str, world: str, rid: str, keys: List[Dict]) -> List[Dict]:
    """Worker: one training run and its evaluations, output to OUT/logs/<run id>.log."""
    import torch

    spec = parse_spec(spec_data)
    torch.set_num_threads(spec.threads or 1)
    spec.threads = spec.threads or 1
    log_path = Path(out) / "logs" / f"{rid}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        bench = Bench(spec, Path(out), Path(world), quiet=True, log=print)
        try:
            return [bench.run_cell(key) for key in keys]
        except Exception as exc:
            raise RobustITError(f"run {rid} failed: {exc} (see {log_path}); rerun the same command: "
                                f"finished cells are kept") from None
