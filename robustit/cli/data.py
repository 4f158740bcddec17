"""`robustit data`: build the embedded world, show samples of a split, check a split, convert a
public dataset (MIMIC-IT, COCO/Flickr30k Karpathy, VQAv2, LLaVA) to the MIMIC-IT layout.

Examples::

    robustit data build --out data/world --seed 0
    robustit data show --data data/world --split train --n 5
    robustit data check --data data/world --split test-a --skip-invalid
    robustit data check --data coco/dataset_coco.json --split test --images coco
    robustit data convert --from coco/dataset_coco.json --split test --images coco --out data/coco
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
    _add_convert(actions)
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
    from .common import add_format_args

    p.add_argument("--data", required=True, metavar="PATH",
                   help="a data root holding one folder per split, a split folder itself, or a "
                        "public dataset file/folder (see --format)")
    p.add_argument("--split", default=None,
                   help="split name, e.g. train, test-a, test-a-vqa; Karpathy: test|val|train|"
                        "restval; VQAv2: val2014|train2014 (needed unless the format has no splits)")
    add_format_args(p)


def _add_convert(actions) -> None:
    c = actions.add_parser("convert", help="write a public dataset in the MIMIC-IT layout",
                           description="Load a local copy of a public dataset (MIMIC-IT with JSON "
                                       "or parquet images, COCO/Flickr30k Karpathy, VQAv2, LLaVA) "
                                       "and write it as split NAME into OUT/NAME/ (MIMIC-IT layout, "
                                       "+ NAME_coco_gt.json for captioning sets with references), "
                                       "so every verb reads it with --data OUT --split NAME.")
    c.add_argument("--from", dest="data", required=True, metavar="PATH",
                   help="the dataset file or folder")
    c.add_argument("--split", default=None, help="split to take (Karpathy: test|val|train|restval, "
                                                 "'+'-joined; VQAv2: val2014|train2014)")
    from .common import add_format_args

    add_format_args(c)
    c.add_argument("--out", required=True, metavar="DIR", help="data root to write OUT/NAME/ into")
    c.add_argument("--name", default=None, help="split name to write (default: the split, or the "
                                                "file name for formats without splits)")
    c.add_argument("--skip-invalid", action="store_true",
                   help="skip records with missing fields or missing/corrupt images and count them")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action; returns the exit status."""
    return {"build": run_build, "show": run_show, "check": run_check,
            "convert": run_convert}[args.data_action](args)


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


def _load(args: argparse.Namespace, validate: bool, skip_invalid: bool = False):
    """The set named by --data/--split: a robustit split (``DATA/SPLIT`` or ``DATA``, read by
    ``load_split`` as before) or a public format (``load_dataset``: --format/--images/--limit)."""
    from ..data.formats import load_dataset

    if not Path(args.data).exists():
        raise DataError(f"--data {args.data}: no such file or folder; build one with "
                        f"`robustit data build --out {args.data}` or give a dataset file")
    return load_dataset(args.data, args.format, split=args.split, images=args.images,
                        limit=args.limit, skip_invalid=skip_invalid, validate_images=validate)


def run_show(args: argparse.Namespace) -> int:
    from ..data.records import decode_image

    if args.n < 1 or args.start < 0:
        raise DataError(f"--n must be >= 1 and --start >= 0; got --n {args.n} --start {args.start}")
    dataset = _load(args, validate=False)
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
    print(f"({len(dataset)} samples in {dataset.name})")
    return 0


def run_check(args: argparse.Namespace) -> int:
    dataset = _load(args, validate=True, skip_invalid=args.skip_invalid)
    tasks: Dict[str, int] = {}
    for s in dataset.samples:
        tasks[s.task] = tasks.get(s.task, 0) + 1
    print(f"{dataset.name}: {len(dataset)} valid samples, {len(dataset.images)} images, tasks {tasks}, "
          f"in-context map: {'yes' if dataset.in_context is not None else 'no'}")
    skipped = dataset.meta.get("skipped", 0)
    if args.skip_invalid:
        print(f"skipped {skipped} invalid record(s)")
        for reason in dataset.meta.get("skipped_reasons", [])[:10]:
            print(f"  - {reason}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """Load --from in its format and write OUT/NAME/ in the MIMIC-IT layout (+ COCO gt)."""
    from ..data.formats import convert_dataset

    dataset = _load(args, validate=True, skip_invalid=args.skip_invalid)
    written = convert_dataset(dataset, args.out, args.name)
    name = args.name or dataset.name
    fmt = dataset.meta.get("format", {}).get("name")
    print(f"{name}: {len(dataset)} samples, {len(dataset.images)} images ({fmt}) -> "
          f"{written['instructions'].parent}")
    if "coco_gt" in written:
        print(f"COCO caption ground truth: {written['coco_gt']}")
    if dataset.meta.get("skipped"):
        print(f"skipped {dataset.meta['skipped']} invalid record(s) (--skip-invalid)")
    print(f"use it with: --data {args.out} --split {name}")
    return 0
