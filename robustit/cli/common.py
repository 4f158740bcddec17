"""Options and helpers shared by several verbs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import ConfigError, DataError


def add_data_args(p: argparse.ArgumentParser, split_default: str = "train",
                  split_help: str = "split name inside --data", formats: bool = False) -> None:
    """--data/--split/--skip-invalid; with ``formats`` also --format/--images/--limit (then pass
    ``**data_options(args)`` to :func:`open_split`)."""
    p.add_argument("--data", required=True, metavar="PATH",
                   help="a data root holding one folder per split (as `robustit data build` writes), "
                        "a split folder itself (MIMIC-IT layout: NAME_instructions.json + NAME.json), "
                        "or a public dataset file/folder (see --format)")
    p.add_argument("--split", default=split_default, help=f"{split_help} (default: {split_default})")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip records with a missing/corrupt image or missing fields, and report how "
                        "many were skipped at the end (default: stop at the first one with an error)")
    if formats:
        add_format_args(p)


def add_format_args(p: argparse.ArgumentParser) -> None:
    """``--format``, ``--images`` and ``--limit``: read --data in a public format (docs/data.md)."""
    p.add_argument("--format", default="auto", metavar="FORMAT",
                   help="format of --data: auto (detect from names/content), mimicit, karpathy "
                        "(coco-karpathy, flickr30k-karpathy), vqav2, llava (default: auto)")
    p.add_argument("--images", default=None, metavar="DIR|FILE",
                   help="image folder for karpathy/vqav2/llava data, or the images file "
                        "(.json/.parquet) of a MIMIC-IT instructions file (default: beside --data)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="load only the first N samples of --data (default: all)")


def data_options(args: argparse.Namespace) -> dict:
    """The ``open_split`` keywords given by :func:`add_format_args` (defaults when absent)."""
    return {"format": getattr(args, "format", "auto"), "images": getattr(args, "images", None),
            "limit": getattr(args, "limit", None)}


def open_split(data: str, split: str, skip_invalid: bool = False, format: str = "auto",
               images: Optional[str] = None, limit: Optional[int] = None):
    """Load ``split`` from a data root (``DATA/SPLIT/``) or from a split folder (``DATA/``); any
    other --data (a public format: a file, or a folder of one) goes through ``load_dataset``."""
    from ..data.mimicit import load_split

    root = Path(data)
    if not root.exists():
        raise DataError(f"--data {data}: no such file or folder")
    folder = root / split if (root / split).is_dir() else root
    if not _robustit_split(folder, split, format, images, limit):
        return _open_format(root, split, skip_invalid, format, images, limit)
    dataset = load_split(folder, split, skip_invalid=skip_invalid)
    dataset.meta["location"] = data_identity(folder, split)
    return dataset


def _robustit_split(folder: Path, split: str, format: str, images, limit) -> bool:
    """A split in robustit's own layout (NAME.json images) read without format options."""
    return (format in (None, "auto", "mimicit") and images is None and limit is None
            and folder.is_dir() and (folder / f"{split}.json").is_file())


def _open_format(root: Path, split: str, skip_invalid: bool, format: str, images, limit):
    from ..data.formats import identity, load_dataset

    dataset = load_dataset(root, format or "auto", split=split, images=images, limit=limit,
                           skip_invalid=skip_invalid)
    dataset.meta["location"] = {**identity(dataset), "data": str(root.resolve()), "split": split}
    return dataset


def data_identity(folder: Path, split: str) -> dict:
    """Where a split was read from and the sha256 of its files (recorded with results)."""
    from ..data.mimicit import split_paths
    from ..models.checkpoint import file_sha256

    paths = split_paths(folder, split)
    return {"folder": str(folder.resolve()), "split": split,
            "sha256": {k: file_sha256(paths[k]) for k in ("instructions", "images") if paths[k].exists()}}


def report_skipped(dataset) -> None:
    skipped = dataset.meta.get("skipped", 0)
    if skipped:
        print(f"note: skipped {skipped} invalid record(s) in {dataset.name} (--skip-invalid)")


def add_model_args(p: argparse.ArgumentParser, tuned: bool = True) -> None:
    p.add_argument("--model", default="embedded", metavar="BASE",
                   help="base model: 'embedded' (the shipped default), a robustit base folder, or a "
                        "local Hugging Face LLaVA / BLIP-2 / IDEFICS folder (config.json + "
                        "*.safetensors + tokenizer + preprocessor_config.json), a `robustit compose` "
                        "folder, or a Hub name already in the local cache; nothing is downloaded "
                        "(docs/models.md)")
    if tuned:
        p.add_argument("--tuned", default=None, metavar="CKPT",
                       help="a tuned checkpoint folder (a run folder or its checkpoint/) to load on "
                            "top of the base; omit to use the base alone")


def tuned_folder(path: Optional[str]) -> Optional[str]:
    """Accept a run folder (with checkpoint/) or the checkpoint folder itself."""
    if path is None:
        return None
    p = Path(path)
    if (p / "checkpoint" / "tuned.json").exists():
        return str(p / "checkpoint")
    return str(p)


def add_param_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help=f"set one {what} parameter (repeatable); VALUE is parsed as JSON when it "
                        f"can be (0.2, true, \"text\"), else taken as a string")


def parse_params(items: List[str], option: str = "--param") -> Dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{option} {item!r}: expected KEY=VALUE, e.g. {option} alpha=2")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default; use 1 when other processes run)")


def set_threads(n: int) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def add_inference_defense_args(p: argparse.ArgumentParser) -> None:
    """Inference-time baseline defenses (the paper's Table 10), shared by eval and generate."""
    g = p.add_argument_group("inference-time defenses (apply to clean and triggered inputs)")
    g.add_argument("--prompt-filter", default=None, metavar="perfect|realistic|FILE",
                   help="drop blacklisted words / phrases from every instruction before generation: "
                        "'perfect' (our attacks' text triggers), 'realistic' (rare trigger words from "
                        "the literature) or a file, one entry per line (see docs/baselines.md)")
    g.add_argument("--magnitude-prune", type=float, default=0.0, metavar="SHARE",
                   help="zero this share in [0, 1) of each adapter weight matrix, smallest |w| first, "
                        "before generation (the paper uses 0.2; default 0: off)")


def inference_defenses(args: argparse.Namespace):
    """(prompt filter or None, magnitude-prune share), validated before any model is loaded."""
    from ..defenses.magnitude_prune import check_share
    from ..defenses.prompt_filter import PromptFilter

    share = check_share(args.magnitude_prune, "--magnitude-prune")
    filt = PromptFilter.from_spec(args.prompt_filter) if args.prompt_filter is not None else None
    return filt, share
