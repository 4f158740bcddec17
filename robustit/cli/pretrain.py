"""`robustit pretrain`: pretrain the embedded LVLM from scratch on the world's pretrain split."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    from .common import add_threads_arg

    p = sub.add_parser("pretrain", help="pretrain the embedded model from scratch",
                       description="Train a tokenizer on the world's text, build the embedded "
                                   "Flamingo-style model, train all of it on the `pretrain` split and "
                                   "write a base model folder (safetensors + JSON + tokenizer + card).")
    p.add_argument("--data", required=True, metavar="DIR", help="world root (from `robustit data build`)")
    p.add_argument("--out", required=True, metavar="DIR", help="base model folder to write")
    p.add_argument("--run-dir", default=None, metavar="RUN",
                   help="logs and resume state (default: OUT.run next to OUT)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, data order, dropout")
    p.add_argument("--epochs", type=float, default=None, help="epochs over the pretrain split")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--batch-size", type=int, default=None, help="batch size")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps (for smoke tests)")
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size")
    p.add_argument("--scene-loss-weight", type=float, default=0.05,
                   help="weight of the auxiliary scene-attribute loss on the pooled perceiver output "
                        "(uses the world's meta.scene; 0: off; the shipped model used 0.05)")
    p.add_argument("--scene-pool", choices=["mean", "latents"], default="mean",
                   help="how the scene head reads the adapter output: mean over the latents "
                        "(the shipped model) or the latents side by side, which rewards keeping "
                        "local detail (issue 3's calibration; docs/results.md)")
    p.add_argument("--model-config", metavar="JSON", default=None,
                   help="EmbeddedConfig overrides as JSON, e.g. '{\"lm_layers\": 2}'")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing resume state")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads_arg(p)
    p.set_defaults(func=run)


def _method_params(args: argparse.Namespace) -> dict:
    if not args.scene_loss_weight:
        return {}
    params = {"scene_loss_weight": args.scene_loss_weight}
    if args.scene_pool != "mean":  # left out at the default so the shipped command's config is unchanged
        params["scene_pool"] = args.scene_pool
    return params


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import config_from_dict
    from ..models.embedded import EmbeddedConfig
    from ..train.config import preset_config
    from ..train.pretrain import pretrain
    from .common import open_split, set_threads

    set_threads(args.threads)
    cfg = preset_config("pretrain", lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                        max_steps=args.max_steps, seed=args.seed, threads=args.threads,
                        save_every=500,
                        method_params=_method_params(args))
    pre = open_split(args.data, "pretrain")
    train_set = open_split(args.data, "train")
    model_cfg = None
    if args.model_config:
        first = pre.image(pre.samples[0].image_ids[0])
        overrides = {"image_size": first.shape[0], **json.loads(args.model_config)}
        model_cfg = config_from_dict(EmbeddedConfig, overrides, where="--model-config")
    run_dir = args.run_dir or str(Path(args.out).with_name(Path(args.out).name + ".run"))
    summary = pretrain(pre, [train_set], args.out, run_dir, cfg, model_cfg, args.vocab_size,
                       progress=not args.quiet, resume=not args.no_resume)
    print(json.dumps({k: summary[k] for k in ("steps", "wall_seconds", "samples_per_second")}, indent=2))
    print(f"base model: {args.out}")
    return 0
