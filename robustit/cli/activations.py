"""`robustit activations`: mean per-channel activation at a hook point, per tuned run (Fig. 9)."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace


def register(sub) -> None:
    from .common import add_data_args, add_threads_arg

    p = sub.add_parser("activations", help="mean |activation| per channel at a hook point (Fig. 9)",
                       description="For each --tuned run, the mean |activation| per channel at the "
                                   "hook point (over batch, images and tokens: the quantity AAR "
                                   "ranks) on N seeded samples of a split, with the model's channel "
                                   "masks off; with --manifest also on the same samples' triggered "
                                   "twins. Writes OUT (JSON) and, with --plot, a PNG with the "
                                   "channels sorted by the first run's mean (pass the clean-tuned "
                                   "run first).")
    p.add_argument("--model", default="embedded", metavar="BASE",
                   help="base model the runs were tuned from: 'embedded' (default) or a base folder")
    p.add_argument("--tuned", action="append", required=True, metavar="RUN",
                   help="a run folder (or its checkpoint/) written by `robustit train` (repeatable; "
                        "the first one orders the channels in the plot)")
    p.add_argument("--label", action="append", default=[], metavar="L",
                   help="a label per --tuned run, in the same order (default: the run folder's name)")
    add_data_args(p, split_default="test-a", split_help="split whose samples are measured")
    p.add_argument("--hook-point", default=None,
                   help="hook point to measure (default: the model's first, 'perceiver' for the "
                        "embedded model)")
    p.add_argument("--manifest", default=None, metavar="FILE",
                   help="poisoning manifest: also measure the samples' triggered twins with its attack")
    p.add_argument("--support", default="train",
                   help="split for preparing a learned trigger of --manifest (default: train)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="cache for learned triggers (default: $ROBUSTIT_CACHE/attacks or "
                        "~/.cache/robustit/attacks)")
    p.add_argument("--n", type=int, default=256, help="samples to measure (default: 256)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="seed for the choice of samples")
    p.add_argument("--out", required=True, metavar="FILE.json", help="results file to write")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="also draw the picture here")
    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.activations import channel_activation_means
    from ..io import atomic_write_json, provenance
    from ..models.factory import load_model
    from .common import open_split, report_skipped, set_threads
    from .eval import check_writable

    for path in [args.out] + ([args.plot] if args.plot else []):
        check_writable(path)
    labels = _labels(args.tuned, args.label)
    folders = [_checked_run(t) for t in args.tuned]
    set_threads(args.threads)
    dataset = open_split(args.data, args.split, skip_invalid=args.skip_invalid)
    model, _, _ = load_model(args.model, folders[0])
    hook_point = args.hook_point or model.spec.default_hook_point
    model.hook_module_path(hook_point)  # unknown -> error listing the model's hook points
    attack = _attack(args) if args.manifest else None
    runs = []
    for i, (tuned, label, folder) in enumerate(zip(args.tuned, labels, folders)):
        if i:
            model, _, _ = load_model(args.model, folder)
        res = channel_activation_means(model, dataset, hook_point, n=args.n, batch_size=args.batch_size,
                                       seed=args.seed, attack=attack)
        runs.append({"label": label, "tuned": tuned, "channel_mean": res["channel_mean"],
                     "channel_mean_triggered": res["channel_mean_triggered"], "mask": res["mask"]})
        print(f"{label}: {res['width']} channels at {res['module']}, mean |activation| "
              f"{sum(res['channel_mean']) / res['width']:.4g} (max {max(res['channel_mean']):.4g})")
    out = {"hook_point": hook_point, "split": args.split, "n": res["n"], "runs": runs,
           "provenance": provenance()}
    atomic_write_json(args.out, out)
    report_skipped(dataset)
    print(f"results: {args.out}")
    if args.plot:
        from ..report.activation_plot import plot_activations

        print(f"plot: {plot_activations(out, args.plot)}")
    return 0


def _labels(tuned: list, labels: list) -> list:
    from ..errors import ConfigError

    if labels and len(labels) != len(tuned):
        raise ConfigError(f"give one --label per --tuned run ({len(tuned)} runs, {len(labels)} labels), "
                          f"or none to use the run folders' names")
    if labels:
        return list(labels)
    names = [Path(t).resolve().name for t in tuned]
    return [Path(t).resolve().parent.name if n == "checkpoint" else n for t, n in zip(tuned, names)]


def _checked_run(path: str) -> str:
    """The checkpoint folder of a run; a clear error when the run folder or checkpoint is missing."""
    from ..errors import ConfigError
    from ..models.checkpoint import TUNED_META
    from .common import tuned_folder

    if not Path(path).is_dir():
        raise ConfigError(f"--tuned {path}: no such run folder; give a folder written by "
                          f"`robustit train --out RUN` (or its checkpoint/)")
    folder = tuned_folder(path)
    if not (Path(folder) / TUNED_META).exists():
        raise ConfigError(f"--tuned {path}: no tuned checkpoint there (no checkpoint/{TUNED_META}); "
                          f"has the run finished?")
    return folder


def _attack(args):
    """The manifest's attack, prepared exactly as `robustit eval --manifest` prepares it."""
    from .common import open_split
    from .eval import _attacks, _prepare

    specs, _, _ = _attacks(SimpleNamespace(attack=[], manifest=[args.manifest]), {})
    _prepare(specs, open_split(args.data, args.support), args)
    return specs[0][0]
