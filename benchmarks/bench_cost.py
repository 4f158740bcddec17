"""Cost of RobustIT against VanillaIT: s/step, samples/s and peak RSS, measured side by side.

    python benchmarks/bench_cost.py --data work/world [--steps 60] [--warmup 5] [--reps 2]
        [--threads 1] [--batch-size 16] [--out work/bench/cost.json] [--profile]

Every (method, repetition) runs in a fresh subprocess, so peak RSS is per method and no method
inherits another's allocator state. Repetitions alternate the order (v n r i a, then a i r n v,
...) so slow drift of a shared machine cancels. Each run trains the same first
(warmup + steps) * batch samples of the split for warmup + steps optimizer steps through the
training loop's own step (``robustit.train.loop.train_step``); only the steps after the warm-up
are timed.

Methods:
    vanilla          VanillaIT with cached frozen vision features (what `robustit train` does)
    vanilla-nocache  VanillaIT running the vision encoder every step (the paper's setting, where
                     the +14 % is measured)
    robustit         IDR + AAR (clean view from the cache; the augmented view runs the encoder)
    idr, aar         one component only (the paper's Table 2 rows)

Times: wall (perf_counter) and process CPU time (process_time). With one torch thread the CPU
time is the work done, and is far less disturbed than wall time by other processes on a shared
machine; both are reported. Overhead % is computed within each repetition against that
repetition's vanilla run, then the median over repetitions is shown (min..max beside it).

--profile adds one more run each of vanilla, vanilla-nocache and robustit with CPU timers around
the parts of a step (vision encoder, adapter, LM forward, backward, optimizer, augmentations,
tokenization...), printed as ms/step and share of the step.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

#: bench name -> (training method, method parameters, cache frozen vision features)
METHODS = {
    "vanilla": ("vanilla", {}, True),
    "vanilla-nocache": ("vanilla", {}, False),
    "robustit": ("robustit", {}, True),
    "idr": ("robustit", {"components": "idr"}, True),
    "aar": ("robustit", {"components": "aar"}, True),
}
PROFILED = ("vanilla", "vanilla-nocache", "robustit")


# --------------------------------------------------------------------------- worker side


class PartTimer:
    """Exclusive CPU time (thread_time) per named part; nested parts are subtracted from their
    parent, so the parts of a step add up to the step."""

    def __init__(self) -> None:
        self.seconds, self.calls, self._stack = defaultdict(float), Counter(), []

    def wrap(self, name, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.thread_time()
            self._stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                spent, inner = time.thread_time() - start, self._stack.pop()
                self.seconds[name] += spent - inner
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1] += spent
        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def instrument(timer: PartTimer, model, method, data, optimizer) -> None:
    """Put CPU timers around the parts of a training step (only in a throwaway profiling worker:
    this patches torch.Tensor.backward and two module attributes)."""
    import torch

    from robustit.train import robustit_method as rm

    model.encode_images = timer.wrap("vision encoder", model.encode_images)
    model.adapt = timer.wrap("adapter (perceiver)", model.adapt)
    model.language_model.forward = timer.wrap("LM forward (+ cross-attn)", model.language_model.forward)
    model.text_embeddings = timer.wrap("text views E(t), E(A^t(t))", model.text_embeddings)
    data.batch = timer.wrap("batch: gather + tokenize", data.batch)
    torch.Tensor.backward = timer.wrap("backward", torch.Tensor.backward)
    torch.nn.utils.clip_grad_norm_ = timer.wrap("optimizer (clip + AdamW)", torch.nn.utils.clip_grad_norm_)
    optimizer.step = timer.wrap("optimizer (clip + AdamW)", optimizer.step)
    rm.encode_pairs = timer.wrap("tokenize augmented pairs", rm.encode_pairs)
    rm.consistency_loss = timer.wrap("consistency loss", rm.consistency_loss)
    if getattr(method, "visual_aug", None) is not None:
        method.visual_aug = timer.wrap("visual augmentation (kornia)", method.visual_aug)
    if getattr(method, "text_aug", None) is not None:
        method.text_aug.batch = timer.wrap("text augmentation", method.text_aug.batch)
    method.loss = timer.wrap("other (method glue, masks)", method.loss)


def build(args, name):
    """Model, method, data, optimizer and trainable parameters, as `robustit train` sets them up."""
    import torch

    import robustit.train.robustit_method  # noqa: F401  (registers "robustit")
    from robustit.cli.common import open_split
    from robustit.models.factory import load_base
    from robustit.seeding import derive_seed, seed_everything
    from robustit.train.config import preset_config
    from robustit.train.loop import TrainData, build_optimizer, setup_trainable, trainable_named
    from robustit.train.methods import METHODS as TRAIN_METHODS

    torch.set_num_threads(args.threads)
    method_name, params, cache = METHODS[name]
    total = args.warmup + args.steps
    dataset = open_split(args.data, args.split)
    dataset.samples = dataset.samples[: total * args.batch_size]
    model, _ = load_base(args.model)
    cfg = preset_config("embedded-cpu", method=method_name, method_params=params, max_steps=total,
                        batch_size=args.batch_size, cache_vision=cache, save_every=0, seed=args.seed)
    seed_everything(derive_seed(cfg.seed, "global"))
    method = TRAIN_METHODS.get(cfg.method)(cfg.method_params)
    setup_trainable(model, method)
    method.setup(model)
    trainable = trainable_named(model)
    data = TrainData(model, dataset, cfg, method, progress=False)
    return model, method, data, build_optimizer(trainable, cfg), trainable, cfg, total


def worker(args) -> dict:
    """Train one method for warmup + steps steps; per-step wall and CPU times after warm-up."""
    from robustit.train.loop import train_step

    name = args.worker
    model, method, data, optimizer, trainable, cfg, total = build(args, name)
    timer = PartTimer()
    if args.profile_worker:
        instrument(timer, model, method, data, optimizer)
    model.train()
    wall, cpu, samples = [], [], 0
    for step in range(total):
        if step == args.warmup:
            timer.reset()
        w0, c0 = time.perf_counter(), time.process_time()
        _, _, batch = train_step(model, method, optimizer, trainable, data, cfg, step, total)
        if step >= args.warmup:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
            samples += len(batch.samples)
    out = {"method": name, "train_method": cfg.method, "method_params": cfg.method_params,
           "cache_vision": cfg.cache_vision, "steps": len(wall), "samples": samples,
           "wall_s_per_step": sum(wall) / len(wall), "cpu_s_per_step": sum(cpu) / len(cpu),
           "wall_s_median_step": statistics.median(wall),
           "samples_per_s": samples / sum(wall), "samples_per_cpu_s": samples / sum(cpu),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.profile_worker:
        n = len(cpu)
        out["parts_ms_per_step"] = {k: 1000 * v / n for k, v in timer.seconds.items()}
        out["parts_calls_per_step"] = {k: c / n for k, c in timer.calls.items()}
        out["profiled_cpu_s_per_step"] = sum(cpu) / n
    return out


# --------------------------------------------------------------------------- parent side


def run_worker(args, name: str, profile: bool, log) -> dict:
    """One method in a fresh interpreter; returns its result dict."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--worker", name, "--result", str(result),
               "--data", args.data, "--split", args.split, "--model", args.model,
               "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--seed", str(args.seed)] + (["--profile-worker"] if profile else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
               "TOKENIZERS_PARALLELISM": "false"}
        load = os.getloadavg()[0]
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=log)
        if proc.returncode != 0:
            raise SystemExit(f"worker {name} failed (exit {proc.returncode}); see {log.name}")
        out = json.loads(result.read_text())
        out["loadavg_1min_at_start"] = load
        return out


def order(rep: int) -> list:
    names = list(METHODS)
    return names if rep % 2 == 0 else names[::-1]


def summarise(runs: list) -> dict:
    """Per method: medians over repetitions, and overhead vs the same repetition's baselines."""
    by_rep = defaultdict(dict)
    for r in runs:
        by_rep[r["rep"]][r["method"]] = r
    out = {}
    for name in METHODS:
        rows = [reps[name] for reps in by_rep.values() if name in reps]
        entry = {k: statistics.median(r[k] for r in rows)
                 for k in ("wall_s_per_step", "cpu_s_per_step", "samples_per_s", "peak_rss_mb")}
        entry["samples_per_cpu_s"] = statistics.median(r["samples"] / (r["steps"] * r["cpu_s_per_step"])
                                                       for r in rows)
        for base in ("vanilla", "vanilla-nocache"):
            for clock in ("wall", "cpu"):
                key = f"{clock}_s_per_step"
                pcts = [100 * (reps[name][key] / reps[base][key] - 1) for reps in by_rep.values()
                        if name in reps and base in reps]
                entry[f"overhead_{clock}_vs_{base}_pct"] = statistics.median(pcts)
                entry[f"overhead_{clock}_vs_{base}_range"] = [min(pcts), max(pcts)]
        entry["reps"] = len(rows)
        out[name] = entry
    return out


def print_table(summary: dict, batch: int) -> None:
    print(f"\n{'method':16s} {'s/step':>7s} {'cpu s/step':>10s} {'samples/s':>9s} {'per cpu-s':>9s} "
          f"{'vs vanilla (wall / cpu)':>26s} {'vs vanilla-nocache (cpu)':>24s} {'peak RSS MB':>11s}")
    for name, e in summary.items():
        lo, hi = e["overhead_cpu_vs_vanilla_range"]
        print(f"{name:16s} {e['wall_s_per_step']:7.3f} {e['cpu_s_per_step']:10.3f} "
              f"{e['samples_per_s']:9.1f} {e['samples_per_cpu_s']:9.1f} {e['overhead_wall_vs_vanilla_pct']:+9.1f} % / "
              f"{e['overhead_cpu_vs_vanilla_pct']:+6.1f} % [{lo:+.0f}..{hi:+.0f}] "
              f"{e['overhead_cpu_vs_vanilla-nocache_pct']:+20.1f} %   {e['peak_rss_mb']:9.0f}")
    print(f"(batch {batch}; medians over repetitions; samples/s is per wall second, 'per cpu-s' per CPU "
          f"second; [min..max] of the CPU overhead over repetitions)")


def print_profile(profiles: dict) -> None:
    parts = []
    for p in profiles.values():
        parts += [k for k in p["parts_ms_per_step"] if k not in parts]
    names = list(profiles)
    print("\nCPU ms per step by part (share of the step):")
    print(f"{'part':32s}" + "".join(f"{n:>24s}" for n in names))
    for part in sorted(parts, key=lambda k: -profiles[names[-1]]["parts_ms_per_step"].get(k, 0.0)):
        cells = []
        for n in names:
            ms = profiles[n]["parts_ms_per_step"].get(part, 0.0)
            total = 1000 * profiles[n]["profiled_cpu_s_per_step"]
            cells.append(f"{ms:9.1f} ({100 * ms / total:5.1f} %)" if ms else f"{'-':>17s}")
        print(f"{part:32s}" + "".join(f"{c:>24s}" for c in cells))
    rest = [1000 * p["profiled_cpu_s_per_step"] - sum(p["parts_ms_per_step"].values()) for p in profiles.values()]
    print(f"{'(outside the timers)':32s}" + "".join(f"{r:17.1f}{'':7s}" for r in rest))
    print(f"{'step total':32s}" + "".join(f"{1000 * p['profiled_cpu_s_per_step']:17.1f}{'':7s}"
                                          for p in profiles.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="data root (`robustit data build --out DIR`)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--model", default="embedded", help="base model (default: the shipped one)")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2, help="repetitions of every method")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="also time the parts of a step")
    ap.add_argument("--out", default="work/bench/cost.json", help="JSON with config, runs, provenance")
    ap.add_argument("--log", default=None, help="worker output (default: OUT with .log)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--profile-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        Path(args.result).write_text(json.dumps(worker(args)))
        return
    run(args)


def run(args) -> None:
    from robustit.io import atomic_write_json, provenance

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = Path(args.log or out.with_suffix(".log"))
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    runs, profiles = [], {}
    with open(log_path, "w") as log:
        for rep in range(args.reps):
            for name in order(rep):
                r = run_worker(args, name, False, log)
                runs.append({**r, "rep": rep})
                print(f"rep {rep} {name:16s} {r['wall_s_per_step']:.3f} s/step wall, "
                      f"{r['cpu_s_per_step']:.3f} cpu, {r['peak_rss_mb']:.0f} MB", flush=True)
        if args.profile:
            for name in PROFILED:
                profiles[name] = run_worker(args, name, True, log)
    summary = summarise(runs)
    print_table(summary, args.batch_size)
    if profiles:
        print_profile(profiles)
    config = {k: v for k, v in vars(args).items() if k not in ("worker", "result", "profile_worker")}
    atomic_write_json(out, {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                            "started": started, "config": config, "methods": {k: list(v) for k, v in METHODS.items()},
                            "machine": {"cpu_count": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
                            "summary": summary, "runs": runs, "profile": profiles or None,
                            "provenance": provenance()})
    print(f"\nwrote {out} (worker output: {log_path})")


if __name__ == "__main__":
    main()
