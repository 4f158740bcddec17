"""Training throughput of 2-process DDP against 1 process at the same global batch, on CPU.

    python benchmarks/bench_ddp.py [--model embedded] [--data work/world] [--split train]
        [--methods vanilla,robustit] [--global-batch 16] [--steps 20] [--warmup 3]
        [--samples 256] [--out work/bench/ddp.json]

Each set-up runs ``robustit.train.loop.train`` in fresh processes started with
``torch.multiprocessing.spawn`` (1 torch thread each): 1 process with batch G, and 2 processes
(gloo, the environment torchrun gives) with batch G / 2 each, i.e. the same samples per optimizer
step. Rank 0 records the end of every optimizer step (``Runtime.step``); samples/s is
G x timed steps / wall time of the steps after the warm-up. CPU ms/step is rank 0's process
time per step (one thread: the work it did). Set-up (model load, feature cache) is not timed.

On the 2-core machine this was written on, 2 processes can at best halve the wall time, and
only when nothing else runs: record the load average beside the figures (printed, and in --out).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, method: str, out: str) -> None:
    """One rank: train ``warmup + steps`` steps and (rank 0) write the step end times to ``out``."""
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from robustit.cli.common import open_split
    from robustit.models.factory import load_base
    from robustit.train import runtime
    from robustit.train.config import TrainConfig
    from robustit.train.loop import train

    ends = []
    step = runtime.Runtime.step

    def timed(self, *a, **k):  # the end of each optimizer step, on this rank's clock
        result = step(self, *a, **k)
        ends.append((time.perf_counter(), time.process_time()))
        return result

    runtime.Runtime.step = timed
    dataset = open_split(args.data, args.split)
    dataset.samples = dataset.samples[: args.samples]
    model, _ = load_base(args.model)
    cfg = TrainConfig(method=method, batch_size=args.global_batch // world,
                      max_steps=args.warmup + args.steps, save_every=0, log_every=10**9, threads=1, seed=0)
    summary = train(model, dataset, cfg, Path(out).with_suffix(".run"), progress=False, resume=False)
    if rank == 0:
        Path(out).write_text(json.dumps({"ends": ends, "scale": summary["scale"]}))


def measure(world: int, method: str, args: argparse.Namespace, tmp: Path) -> dict:
    """Throughput of ``world`` processes at the global batch ``args.global_batch``."""
    out = tmp / f"{method}-{world}.json"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(world, port, args, method, str(out)), nprocs=world, join=True)
    rec = json.loads(out.read_text())
    (w0, c0), (w1, c1) = rec["ends"][args.warmup - 1], rec["ends"][-1]
    return {"method": method, "processes": world, "per_process_batch": rec["scale"]["per_rank_batch"],
            "global_batch": rec["scale"]["global_batch"], "steps": args.steps,
            "samples_per_s": round(args.steps * args.global_batch / (w1 - w0), 1),
            "wall_ms_per_step": round(1000 * (w1 - w0) / args.steps, 1),
            "rank0_cpu_ms_per_step": round(1000 * (c1 - c0) / args.steps, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--data", default="work/world")
    ap.add_argument("--split", default="train")
    ap.add_argument("--methods", default="vanilla,robustit")
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--samples", type=int, default=256, help="first N samples of the split (epochs wrap)")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.global_batch % 2 or args.warmup < 1:
        ap.error("--global-batch must be even and --warmup >= 1")
    rows, load = [], {"before": os.getloadavg()[0]}
    print(f"{'method':9s} {'procs':>5s} {'batch/proc':>10s} {'samples/s':>9s} {'wall ms/step':>12s} "
          f"{'rank0 cpu ms/step':>17s}")
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            for world in (1, 2):
                r = measure(world, method, args, Path(tmp))
                rows.append(r)
                print(f"{method:9s} {world:5d} {r['per_process_batch']:10d} {r['samples_per_s']:9.1f} "
                      f"{r['wall_ms_per_step']:12.1f} {r['rank0_cpu_ms_per_step']:17.1f}", flush=True)
    load["after"] = os.getloadavg()[0]
    print(f"load average (1 min) before {load['before']:.2f}, after {load['after']:.2f}; "
          f"cores: {os.cpu_count()}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": " ".join(["python", *sys.argv]), "date": datetime.now(timezone.utc).isoformat(),
                "torch": torch.__version__, "cores": os.cpu_count(), "load_average_1min": load}
        args.out.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
