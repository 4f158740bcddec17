"""Run a bench grid's training runs in parallel worker processes (``robustit bench --jobs N``).

On a CPU, N processes with one torch thread each beat one process with N threads (measured on
2 cores: see docs/bench.md). What the runs share is made first, in this process and in order:
the world, the training subset and every poisoned set (learned triggers are optimised once).
Then each training run (its training and all its evaluations) is one task for a worker; a
worker writes its cells' records itself, atomically, so a kill loses at most the runs in flight.
Each worker's output goes to ``OUT/logs/<run id>.log``.

An interrupt (Ctrl-C, or SIGTERM, which ``robustit.cli.main`` turns into one) or a failed run
terminates the workers at once: waiting for the runs in flight would let a time-limited job
(``timeout``, a batch scheduler) run past its limit, and their cells are redone by a rerun.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Tuple

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
    tasks = [(*args, rid, keys) for rid, keys in groups.items()]
    with contextlib.closing(pool_map(_run_group_task, tasks, jobs)) as results:  # closing: an
        for rid, records in results:  # error here terminates the workers too; a failed run raises
            out.update({r["id"]: r for r in records})
            bench.write_store()
            bar.update(len(records))
            bench.log(f"[done] {rid} ({len(records)} cells)")
    bar.close()
    return out


def pool_map(worker: Callable[[Tuple], Any], tasks: Iterable[Tuple], jobs: int) -> Iterator[Any]:
    """``worker(task)`` for every task in ``jobs`` spawned processes, results as they finish.

    On any exception in the caller or a worker (KeyboardInterrupt included) the workers are
    terminated before it propagates, so nothing runs on after the command has stopped.
    ``worker`` must be importable by name (a module-level function), as spawn requires.
    """
    pool = get_context("spawn").Pool(jobs, initializer=_worker_signals)
    try:
        yield from pool.imap_unordered(worker, tasks)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def _worker_signals() -> None:
    """Workers leave interrupts to the parent (Ctrl-C reaches the whole process group) and die
    at once on the parent's terminate(): a worker that turned SIGTERM into an exception would
    go back to waiting for tasks, and the parent's join would hang."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(128 + signum))


def _run_group_task(task: Tuple) -> Tuple[str, List[Dict]]:
    return task[3], _run_group(*task)


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
