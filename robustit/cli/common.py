"""Options and helpers shared by several verbs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import ConfigError, DataError


def add_data_args(p: argparse.ArgumentParser, split_default: str = "train",
                  split_help: str = "split name inside --data") -> None:
    p.add_argument("--data", required=True, metavar="DIR",
                   help="a data root holding one folder per split (as `robustit data build` writes), "
                        "or a split folder itself (MIMIC-IT layout: NAME_instructions.json + NAME.json)")
    p.add_argument("--split", default=split_default, help=f"{split_help} (default: {split_default})")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip records with a missing/corrupt image or missing fields, and report how "
                        "many were skipped at the end (default: stop at the first one with an error)")


def open_split(data: str, split: str, skip_invalid: bool = False):
    """Load ``split`` from a data root (``DATA/SPLIT/``) or from a split folder (``DATA/``)."""
    from ..data.mimicit import load_split

    root = Path(data)
    if not root.exists():
        raise DataError(f"--data {data}: no such folder")
    folder = root / split if (root / split).is_dir() else root
    dataset = load_split(folder, split, skip_invalid=skip_invalid)
    dataset.meta["location"] = data_identity(folder, split)
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
                   help="base model: 'embedded' (the shipped default) or a base model folder "
                        "(config.json + model.safetensors + tokenizer.json)")
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
