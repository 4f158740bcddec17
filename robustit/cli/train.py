"""`robustit train`: tune a base model's adapter + embeddings (VanillaIT, RobustIT, ...)."""

from __future__ import annotations

import argparse
import json

from .common import (add_data_args, data_options, add_model_args, add_param_arg, add_threads_arg, open_split,
                     parse_params, report_skipped)


def register(sub) -> None:
    p = sub.add_parser("train", help="instruction-tune a model (vanilla, robustit, ...)",
                       description="Load a base model, freeze everything but the adapter and the "
                                   "word embeddings / LM head, and tune on an instruction split. "
                                   "Writes RUN/checkpoint (tuned parts only), RUN/resume, RUN/logs "
                                   "(TensorBoard + loss.jsonl) and RUN/train.json. Rerunning with the "
                                   "same --out resumes from the last saved step.")
    add_data_args(p, formats=True)
    add_model_args(p, tuned=False)
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    p.add_argument("--method", default="vanilla",
                   help="tuning method: vanilla (VanillaIT), robustit (IDR + AAR), the baselines "
                        "fineprune and cleanclip (--param percentile=20, --param variants=2; see "
                        "docs/baselines.md), guard (screen the data on the frozen base, repair the "
                        "suspects, tune: --param action=drop, threshold=6, idr=true), the screening "
                        "baselines byorn and abl (docs/audit.md), ... (see `robustit train --list-methods`)")
    p.add_argument("--list-methods", action="store_true", help="print the known methods and exit")
    p.add_argument("--preset", default="embedded-cpu",
                   help="hyper-parameter preset: embedded-cpu (measured for the embedded model) or "
                        "paper (lr 1e-5, batch 16, 3 epochs)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (overrides the preset)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (overrides the preset)")
    p.add_argument("--epochs", type=float, default=None, help="epochs, may be fractional (overrides the preset)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--seed", type=int, default=0, help="seed for data order, augmentation and dropout")
    p.add_argument("--save-every", type=int, default=None, help="resumable checkpoint every N steps")
    p.add_argument("--no-cache-vision", action="store_true",
                   help="recompute frozen vision features every step (default: cache them when the "
                        "input is not augmented)")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if RUN/resume exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_scale_args(p)
    g = p.add_argument_group("RobustIT (--method robustit)")
    g.add_argument("--alpha", type=float, default=None, help="IDR consistency weight (paper: 2)")
    g.add_argument("--beta", type=float, default=None, help="AAR momentum in [0, 1] (paper: 0.9)")
    g.add_argument("--gamma", type=float, default=None,
                   help="AAR share of channels kept, in (0, 1] (paper: 0.5)")
    g.add_argument("--components", choices=["both", "idr", "aar"], default=None,
                   help="both (RobustIT), idr (IDR only) or aar (AAR only): the paper's ablation rows")
    add_param_arg(p, "method (e.g. lm_view=clean, normalise=relative, hook_point=vision, label_aware=true)")
    add_threads_arg(p)
    p.set_defaults(func=run)


def add_scale_args(p: argparse.ArgumentParser) -> None:
    """--device, --mixed-precision, --grad-accum (docs/training.md, "Several processes")."""
    g = p.add_argument_group("devices and processes (run under torchrun / accelerate launch for "
                             "several processes; --batch-size is per process)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: this process's GPU when CUDA is visible, else the CPU (default)")
    g.add_argument("--mixed-precision", default=None, choices=["no", "bf16", "fp16"],
                   help="autocast precision (default: the launcher's ACCELERATE_MIXED_PRECISION, "
                        "else no); fp16 needs a GPU")
    g.add_argument("--grad-accum", type=int, default=None, metavar="N",
                   help="micro-batches per optimizer step and process (default: the launcher's "
                        "ACCELERATE_GRADIENT_ACCUMULATION_STEPS, else 1); global batch = "
                        "batch size x processes x N")


def scale_options(args: argparse.Namespace) -> dict:
    """grad_accum and mixed_precision for the TrainConfig: the options, else the launcher's."""
    import os

    accum = (args.grad_accum if args.grad_accum is not None
             else int(os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")))
    precision = args.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    return {"grad_accum": accum, "mixed_precision": precision}


def method_params(args: argparse.Namespace) -> dict:
    """--param KEY=VALUE plus the RobustIT shortcuts (an error for other methods)."""
    from ..errors import ConfigError

    params = parse_params(args.param)
    shortcuts = {k: getattr(args, k) for k in ("alpha", "beta", "gamma", "components")
                 if getattr(args, k) is not None}
    if shortcuts and args.method != "robustit":
        raise ConfigError(f"--{'/--'.join(shortcuts)} apply to --method robustit only; got --method {args.method}")
    return {**params, **shortcuts}


def run(args: argparse.Namespace) -> int:
    from ..distributed import is_main_process
    from ..models.factory import load_base
    from ..train.config import preset_config
    from ..train.loop import train
    from ..train.methods import METHODS
    from ..train.runtime import check_precision

    if args.list_methods:
        print("\n".join(METHODS.names()))
        return 0
    METHODS.get(args.method)  # fail fast on an unknown name
    cfg = preset_config(args.preset, method=args.method, lr=args.lr, batch_size=args.batch_size,
                        epochs=args.epochs, max_steps=args.max_steps, seed=args.seed,
                        save_every=args.save_every, threads=args.threads,
                        cache_vision=not args.no_cache_vision, method_params=method_params(args),
                        **scale_options(args))
    METHODS.get(cfg.method)(cfg.method_params)  # bad method parameters fail before any loading
    check_precision(cfg.mixed_precision, args.device)  # e.g. fp16 on a CPU, before any loading
    dataset = open_split(args.data, args.split, skip_invalid=args.skip_invalid, **data_options(args))
    model, info = load_base(args.model)
    summary = train(model, dataset, cfg, args.out, base_info={**info.to_dict(), "identity": model.identity()},
                    progress=not args.quiet, resume=not args.no_resume, device=args.device)
    if not is_main_process():  # under a launcher rank 0 reports
        return 0
    report_skipped(dataset)
    print(json.dumps({**{k: summary[k] for k in ("method", "trainable_parameters", "steps", "wall_seconds",
                                                 "samples_per_second")},
                      "global_batch": summary["scale"]["global_batch"]}, indent=2))
    print(f"checkpoint: {args.out}/checkpoint")
    return 0
