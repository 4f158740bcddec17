"""Benchmark: VanillaIT training samples/s and generation captions/s, 1 and 2 threads.

    python benchmarks/bench_train_generate.py --data work/world [--model embedded] [--steps 30]
        [--device cpu|cuda] [--threads 1,2]

Runs every configuration in this one process, side by side, and prints the machine's core
count and device. ``--device cuda`` times the same steps on the GPU (``--threads`` then sets
the host threads). Training uses the embedded-cpu preset's batch size with cached vision features (the
default) and without; generation is greedy with the KV cache at batch 1 and the default batch.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_train(model_path, data, threads, steps, cache, device="cpu") -> float:
    from robustit.models.factory import load_base
    from robustit.train.config import preset_config
    from robustit.train.loop import train

    torch.set_num_threads(threads)
    model, _ = load_base(model_path)
    cfg = preset_config("embedded-cpu", max_steps=steps, save_every=0, cache_vision=cache, log_every=10**6)
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(model, data, cfg, tmp, progress=False, device=device)
    return summary["samples_per_second"]


def bench_generate(model_path, data, threads, batch_size, n, device="cpu") -> float:
    from robustit.eval.generation import DecodingConfig, generate_for_set
    from robustit.models.factory import load_base

    torch.set_num_threads(threads)
    model, _ = load_base(model_path)
    model.to(device)
    subset = type(data)(data.name, data.samples[:n], data.images, data.meta)
    decoding = DecodingConfig(batch_size=batch_size, max_new_tokens=20)
    if device == "cuda":  # one warm-up batch: CUDA context and kernel selection are not throughput
        warm = type(data)(data.name, data.samples[:batch_size], data.images, data.meta)
        generate_for_set(model, warm, decoding, progress=False)
    _sync(device)
    t0 = time.perf_counter()
    generate_for_set(model, subset, decoding, progress=False)
    _sync(device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    from robustit.cli.common import open_split

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="world root from `robustit data build`")
    ap.add_argument("--model", default="embedded", help="base model (default: the shipped one)")
    ap.add_argument("--steps", type=int, default=30, help="training steps per measurement")
    ap.add_argument("--n", type=int, default=128, help="captions per generation measurement")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    ap.add_argument("--threads", default="1,2", help="host thread counts to try, comma-separated")
    args = ap.parse_args()
    train_set = open_split(args.data, "train")
    train_set.samples = train_set.samples[: args.steps * 16 * 2]
    test_set = open_split(args.data, "test-a")
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none"
    print(f"machine: {os.cpu_count()} cores; torch {torch.__version__}; device {args.device} (GPU: {gpu})")
    for threads in [int(t) for t in args.threads.split(",")]:
        for cache in (True, False):
            sps = bench_train(args.model, train_set, threads, args.steps, cache, args.device)
            print(f"train  threads={threads} cache_vision={cache!s:5}  {sps:7.1f} samples/s")
        for bs in (1, 32):
            cps = bench_generate(args.model, test_set, threads, bs, args.n if bs > 1 else args.n // 4,
                                 args.device)
            print(f"generate threads={threads} batch={bs:<3}            {cps:7.1f} captions/s")


if __name__ == "__main__":
    main()
