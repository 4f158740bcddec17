"""What screening costs against the tuning it protects, side by side in one process.

    python benchmarks/bench_screen_cost.py --data work/world [--n 2000] [--steps 40] [--reps 2]
        [--epochs 3] [--threads 1] [--out work/bench/screen-cost.json]

On the first N training samples it alternates, ``reps`` times: ``steps`` VanillaIT optimizer steps
(the loop's own ``train_step``, cached vision features, the embedded-cpu preset's batch), and the
screen of the same N samples with the guard's default signals (one own-image and one other-image
pass) and with the likelihood alone (one pass: BYORn's signal). Process CPU time (with one torch
thread, the work done; far steadier than wall time on a shared machine) is reported. A full
VanillaIT run is projected as CPU per step x the steps of ``epochs`` epochs over N samples, and
each screen is given as a share of it. The vision-feature cache is built once and shared, as in
the guard (its cost is VanillaIT's too).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="work/world", help="embedded world data root (default work/world)")
    ap.add_argument("--n", type=int, default=2000, help="first N training samples (default 2000)")
    ap.add_argument("--steps", type=int, default=40, help="timed VanillaIT steps per repetition (default 40)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions, alternating the order (default 2)")
    ap.add_argument("--epochs", type=float, default=3, help="epochs of the projected tuning run (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    import torch

    torch.set_num_threads(args.threads)
    from robustit.data.mimicit import load_split
    from robustit.defenses.screening.config import ScreenConfig
    from robustit.defenses.screening.likelihood import VisionInputs
    from robustit.defenses.screening.screen import screen_dataset
    from robustit.io import provenance
    from robustit.models.factory import load_base
    from robustit.train.config import preset_config
    from robustit.train.loop import TrainData, build_optimizer, setup_trainable, train_step, trainable_named
    from robustit.train.methods import METHODS

    data = load_split(Path(args.data) / "train", "train").head(args.n)
    model, _ = load_base("embedded")
    cfg = preset_config("embedded-cpu", method="vanilla", epochs=args.epochs)
    method = METHODS.get("vanilla")({})
    setup_trainable(model, method)
    loop_data = TrainData(model, data, cfg, method, progress=False)
    params = trainable_named(model)
    opt = build_optimizer(params, cfg)
    total_steps = math.ceil(args.epochs * math.ceil(len(data) / cfg.batch_size))
    vision = VisionInputs(model, data, features=loop_data.features, store=loop_data.store)
    screens = {"guard (default signals)": ScreenConfig(), "likelihood only (one pass)": ScreenConfig(
        signals=("likelihood",))}
    cpu = {"vanilla_step": [], **{k: [] for k in screens}}
    step = 0
    for rep in range(args.reps):
        order = ["vanilla", *screens] if rep % 2 == 0 else [*screens, "vanilla"]
        for what in order:
            t0 = time.process_time()
            if what == "vanilla":
                model.train()
                for _ in range(args.steps):
                    train_step(model, method, opt, params, loop_data, cfg, step, total_steps)
                    step += 1
                cpu["vanilla_step"].append((time.process_time() - t0) / args.steps)
            else:
                screen_dataset(model, data, screens[what], vision=vision, progress=False)
                cpu[what].append(time.process_time() - t0)
    per_step = statistics.median(cpu["vanilla_step"])
    tuning = per_step * total_steps
    out = {"n": len(data), "batch_size": cfg.batch_size, "epochs": args.epochs, "steps": total_steps,
           "vanilla_cpu_s_per_step": round(per_step, 4), "vanilla_projected_cpu_s": round(tuning, 1),
           "screens": {k: {"cpu_s": round(statistics.median(v), 2),
                           "share_of_tuning": round(statistics.median(v) / tuning, 4)} for k, v in cpu.items()
                       if k != "vanilla_step"},
           "raw": cpu, "threads": args.threads, "provenance": provenance()}
    print(f"VanillaIT: {per_step * 1000:.0f} ms CPU/step x {total_steps} steps = {tuning:.0f} CPU s "
          f"({args.epochs:g} epochs of {len(data)} samples, batch {cfg.batch_size})")
    for k, v in out["screens"].items():
        print(f"screen, {k}: {v['cpu_s']:.1f} CPU s = {100 * v['share_of_tuning']:.1f} % of that tuning")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
