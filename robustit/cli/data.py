"""`robustit data`: build the embedded world, show samples of a split, check a split.

Examples::

    robustit data build --out data/world --seed 0
    robustit data show --data data/world --split train --n 5
    robustit data check --data data/world --split test-a --skip-invalid
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Dict

from ..errors import DataError


def register(subparsers) -> None:
    """Add the ``data`` verb and its actions ``build``, ``show`` and ``check``."""
    p = subparsers.add_parser("data", help="build, show and check instruction data",
                              description="Build the embedded scene world, or look at and "
                                          "validate a split in the MIMIC-IT layout.")
    actions = p.add_subparsers(dest="data_action", metavar="ACTION")
    actions.required = True
    _add_build(actions)
    _add_show(actions)
    _add_check(actions)
    p.set_defaults(func=run)


def _add_build(actions) -> None:
    b = actions.add_parser("build", help="write every split of the embedded world",
                           description="Render the embedded scene world and write each split "
                                       "(MIMIC-IT layout) plus COCO ground truth and world.json. "
                                       "Re-running with the same options does nothing.")
    b.add_argument("--out", required=True, metavar="DIR", help="data root to write (one folder per split)")
    b.add_argument("--seed", type=int, default=None, help="world seed (default 0)")
    b.add_argument("--image-size", type=int, default=None, help="image side in pixels (default 64)")
    b.add_argument("--pretrain", type=int, default=None, help="pretrain images (default 24000)")
    b.add_argument("--train", type=int, default=None, help="instruction-tuning samples (default 6000)")
    b.add_argument("--val", type=int, default=None, help="validation samples (default 500)")
    b.add_argument("--test", type=int, default=None,
                   help="images in each captioning test split test-a and test-b (default 500)")
    b.add_argument("--test-vqa", type=int, default=None, help="questions in test-a-vqa (default 500)")
    b.add_argument("--qa-share", type=float, default=None,
                   help="share of train/val samples that are short-answer questions (default 0.25)")
    b.add_argument("--workers", type=int, default=None,
                   help="processes that render images (default: CPU count, at most 4); the data "
                        "do not depend on it")
    b.add_argument("--force", action="store_true",
                   help="rebuild even if --out already holds this world (or another one)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_show(actions) -> None:
    s = actions.add_parser("show", help="print a few samples of a split",
                           description="Print the first samples of a split: ids, image size, "
                                       "instruction, answer, references or VQA answers.")
    _add_split_args(s)
    s.add_argument("--n", type=int, default=5, help="how many samples to print (default 5)")
    s.add_argument("--start", type=int, default=0, help="index of the first sample (default 0)")


def _add_check(actions) -> None:
    c = actions.add_parser("check", help="validate a split and print counts",
                           description="Load a split with every image decoded, and print "
                                       "counts of samples, images, tasks and skipped records.")
    _add_split_args(c)
    c.add_argument("--skip-invalid", action="store_true",
                   help="skip invalid records and report them instead of stopping at the first")


def _add_split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR",
                   help="a data root holding one folder per split, or a split folder itself")
    p.add_argument("--split", required=True, help="split name, e.g. train, test-a, test-a-vqa")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action; returns the exit status."""
    return {"build": run_build, "show": run_show, "check": run_check}[args.data_action](args)


# --------------------------------------------------------------------------------------------

def world_config_from_args(args: argparse.Namespace):
    """A :class:`WorldConfig` with the options given on the command line (ConfigError if bad)."""
    from ..data.world import WorldConfig

    options = {"seed": args.seed, "image_size": args.image_size, "n_pretrain": args.pretrain,
               "n_train": args.train, "n_val": args.val, "n_test_a": args.test,
               "n_test_b": args.test, "n_test_a_vqa": args.test_vqa,
               "train_qa_share": args.qa_share}
    return WorldConfig(**{k: v for k, v in options.items() if v is not None})


def run_build(args: argparse.Namespace) -> int:
    from ..data.build import build_world

    cfg = world_config_from_args(args)
    workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1)
    info = build_world(args.out, cfg, progress=not args.quiet, force=args.force, workers=workers)
    if info.get("reused"):
        print(f"{args.out} already holds this world (seed {cfg.seed}); nothing to do "
              f"(--force rebuilds it)")
        return 0
    for split, entry in info["splits"].items():
        print(f"{split:>11}: {entry['samples']:6d} samples, {entry['images']:6d} images  "
              f"{entry['tasks']}")
    print(f"world written to {args.out} in {info['seconds']} s")
    return 0


def _split_folder(data: str, split: str) -> Path:
    """``DATA/SPLIT`` when it exists (a data root), else ``DATA`` (a split folder)."""
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"--data {data}: no such folder; build one with `robustit data build --out {data}`")
    return root / split if (root / split).is_dir() else root


def run_show(args: argparse.Namespace) -> int:
    from ..data.mimicit import load_split
    from ..data.records import decode_image

    if args.n < 1 or args.start < 0:
        raise DataError(f"--n must be >= 1 and --start >= 0; got --n {args.n} --start {args.start}")
    dataset = load_split(_split_folder(args.data, args.split), args.split, validate_images=False)
    for s in dataset.samples[args.start:args.start + args.n]:
        shapes = ", ".join("x".join(map(str, decode_image(dataset.images[i], where=f"image {i!r}").shape[:2]))
                           for i in s.image_ids)
        print(f"[{s.id}] task={s.task} images={s.image_ids} ({shapes})")
        print(f"  instruction: {s.instruction}")
        print(f"  answer:      {s.answer}")
        for ref in s.meta.get("references", []):
            print(f"  reference:   {ref}")
        if "answers" in s.meta:
            print(f"  answers:     {s.meta['answers']} ({s.meta.get('question_type')})")
    print(f"({len(dataset)} samples in {args.split})")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from ..data.mimicit import load_split

    dataset = load_split(_split_folder(args.data, args.split), args.split,
                         skip_invalid=args.skip_invalid, validate_images=True)
    tasks: Dict[str, int] = {}
    for s in dataset.samples:
        tasks[s.task] = tasks.get(s.task, 0) + 1
    print(f"{args.split}: {len(dataset)} valid samples, {len(dataset.images)} images, tasks {tasks}, "
          f"in-context map: {'yes' if dataset.in_context is not None else 'no'}")
    skipped = dataset.meta.get("skipped", 0)
    if args.skip_invalid:
        print(f"skipped {skipped} invalid record(s)")
        for reason in dataset.meta.get("skipped_reasons", [])[:10]:
            print(f"  - {reason}")
    return 0
