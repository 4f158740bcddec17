"""Training throughput of the tiny Hugging Face families (LLaVA, BLIP-2, IDEFICS) on CPU.

    python benchmarks/bench_families.py [--steps 30] [--warmup 3] [--batch-size 8] [--threads 1]
        [--families llava,blip2,idefics] [--out work/bench/families.json]

Each family is built from its tiny config (``robustit.models.hf_tiny``: random weights,
50-100K parameters, 24x24 vision input), saved as a local HF folder and loaded back with
``load_base`` exactly like a real checkpoint. It then trains on 32x32 coloured-square captions
(so the images are resized every step the encoder runs) through the training loop's own step
(``robustit.train.loop.train_step``): vanilla with cached vision features, and robustit
(IDR + AAR; its augmented view runs the encoder). Only the steps after the warm-up are timed.
Samples/s is wall time; CPU time per step (``process_time``, one thread = the work done) is
printed beside it because it is far less disturbed by other processes on a shared machine.

These are tiny models: the figures measure robustit's per-step overhead around the HF classes
(hooks, token expansion, resizing), not what a real 7B checkpoint does on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def squares(n: int, size: int = 32, seed: int = 0):
    """Flat backgrounds with one coloured square; the caption names the colour."""
    from robustit.data.records import InstructionSet, Sample, encode_png

    rng, names = np.random.default_rng(seed), list(COLOURS)
    samples, images = [], {}
    for i in range(n):
        img = np.full((size, size, 3), rng.integers(0, 60), dtype=np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        img[y:y + size // 3, x:x + size // 3] = COLOURS[names[i % 4]]
        images[f"img-{i}"] = encode_png(img)
        samples.append(Sample(id=f"s-{i}", image_ids=[f"img-{i}"], instruction="Describe the image.",
                              answer=f"a {names[i % 4]} square"))
    return InstructionSet(name="squares", samples=samples, images=images)


def measure(family: str, method_name: str, args, folder: Path) -> dict:
    """Warm up, then time ``args.steps`` optimizer steps of one (family, method)."""
    from robustit.models.factory import load_base
    from robustit.train.config import TrainConfig
    from robustit.train.loop import TrainData, build_optimizer, setup_trainable, train_step, trainable_named
    from robustit.train.methods import METHODS

    model, _ = load_base(str(folder))
    total = args.warmup + args.steps
    cfg = TrainConfig(method=method_name, batch_size=args.batch_size, max_steps=total, lr=1e-3,
                      save_every=0, seed=0)
    method = METHODS.get(method_name)({})
    n_trainable = setup_trainable(model, method)
    method.setup(model)
    params = trainable_named(model)
    data = TrainData(model, squares(total * args.batch_size), cfg, method, progress=False)
    optimizer = build_optimizer(params, cfg)
    model.train()
    for step in range(args.warmup):
        train_step(model, method, optimizer, params, data, cfg, step, total)
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(args.warmup, total):
        train_step(model, method, optimizer, params, data, cfg, step, total)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"family": family, "method": method_name, "steps": args.steps, "batch_size": args.batch_size,
            "parameters": sum(p.numel() for p in model.parameters()), "trainable": n_trainable,
            "samples_per_s": round(args.steps * args.batch_size / wall, 1),
            "wall_ms_per_step": round(1000 * wall / args.steps, 1),
            "cpu_ms_per_step": round(1000 * cpu / args.steps, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="llava,blip2,idefics")
    ap.add_argument("--methods", default="vanilla,robustit")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from robustit.models.hf_tiny import save_tiny

    rows = []
    print(f"{'family':8s} {'method':9s} {'params':>7s} {'trainable':>9s} {'samples/s':>9s} "
          f"{'wall ms/step':>12s} {'cpu ms/step':>11s}")
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            folder = save_tiny(family, Path(tmp) / family)
            for method in args.methods.split(","):
                r = measure(family, method, args, folder)
                rows.append(r)
                print(f"{family:8s} {method:9s} {r['parameters']:7d} {r['trainable']:9d} "
                      f"{r['samples_per_s']:9.1f} {r['wall_ms_per_step']:12.1f} {r['cpu_ms_per_step']:11.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": " ".join(["python", *sys.argv]), "date": datetime.now(timezone.utc).isoformat(),
                "torch_threads": args.threads, "torch": torch.__version__}
        args.out.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
