"""``load_dataset``: any supported public format from a local path -> :class:`InstructionSet`;
``detect_format`` (from file names and the first bytes of a JSON file); ``convert_dataset``
(write the MIMIC-IT layout, plus COCO caption ground truth for evaluation sets)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Optional

from ...errors import DataError
from .. import mimicit as layout
from ..records import InstructionSet
from .base import FORMATS, DataFormat, LoadOptions, check_limit

#: detection order; a path that several formats claim must be named with --format
DETECT_ORDER = ("mimicit", "karpathy", "vqav2", "llava")


def formats() -> List[DataFormat]:
    """The registered formats, once each (aliases left out)."""
    seen: Dict[str, DataFormat] = {}
    for name in FORMATS.names():
        fmt = FORMATS.get(name)
        seen.setdefault(fmt.name, fmt)
    order = [n for n in DETECT_ORDER if n in seen] + sorted(set(seen) - set(DETECT_ORDER))
    return [seen[n] for n in order]


def detect_format(path: str | Path) -> str:
    """The name of the format of ``path``; DataError when none or several fit."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"--data {path}: no such file or folder")
    if path.suffix == ".parquet":
        raise DataError(f"{path} is an images file; pass the MIMIC-IT instructions file as --data "
                        f"and this file as --images")
    found = [fmt.name for fmt in formats() if fmt.detect(path)]
    if len(found) == 1:
        return found[0]
    known = ", ".join(f.name for f in formats())
    if not found:
        raise DataError(f"cannot tell the data format of {path} from its name or first bytes; "
                        f"pass --format (one of {known}); see docs/data.md 'Real datasets'")
    raise DataError(f"{path} looks like several data formats ({', '.join(found)}); pass --format "
                    f"with one of them, or point --data at the file itself")


def load_dataset(path: str | Path, format: str = "auto", split: Optional[str] = None,
                 images: Optional[str | Path] = None, limit: Optional[int] = None,
                 skip_invalid: bool = False, validate_images: Optional[bool] = None) -> InstructionSet:
    """Load a local dataset in any registered format as an :class:`InstructionSet`.

    Args:
        path: a file or folder (see each format's module for what it accepts).
        format: a name from :data:`FORMATS` (``mimicit``, ``karpathy`` / ``coco-karpathy`` /
            ``flickr30k-karpathy``, ``vqav2``, ``llava``) or ``auto`` to detect it.
        split: the split to select, or the set's name for formats without splits.
        images: the image folder (or, for MIMIC-IT, the images file).
        limit: keep the first ``limit`` samples.
        skip_invalid: skip records with missing fields or missing/corrupt images; their count
            is ``meta["skipped"]`` and their reasons ``meta["skipped_reasons"]``.
        validate_images: decode every image now (default: below 50,000 records).

    Raises:
        DataError: naming the file, the record (index and id), the field and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"--data {path}: no such file or folder")
    if images is not None and not Path(images).exists():
        raise DataError(f"--images {images}: no such file or folder")
    check_limit(limit)
    name = detect_format(path) if format in (None, "", "auto") else format
    fmt = FORMATS.get(name)
    options = LoadOptions(split, Path(images) if images is not None else None, limit,
                          skip_invalid, validate_images)
    dataset = fmt.load(path, options)
    dataset.meta.setdefault("format", {"name": fmt.name, "files": [str(path.resolve())]})
    return dataset


def identity(dataset: InstructionSet) -> dict:
    """Where a loaded set came from and the sha256 of its annotation files (for results)."""
    info = dict(dataset.meta.get("format") or {})
    info["sha256"] = {Path(f).name: _sha256(Path(f)) for f in info.get("files", [])
                      if Path(f).is_file()}
    return info


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_eval_captions(dataset: InstructionSet) -> bool:
    """Every sample is a caption with reference captions (COCO ground truth can be written)."""
    return all(s.task == "caption" and s.meta.get("references") for s in dataset.samples)


def convert_dataset(dataset: InstructionSet, out_root: str | Path,
                    name: Optional[str] = None) -> Dict[str, Path]:
    """Write ``dataset`` as split ``name`` into ``OUT_ROOT/NAME/`` (MIMIC-IT layout, atomic files)
    plus ``NAME_coco_gt.json`` when it is a captioning set with references.

    Returns:
        The paths written: ``instructions``, ``images`` and, when written, ``coco_gt``.
    """
    name = name or dataset.name
    folder = Path(out_root) / name
    written = {"instructions": layout.save_split(dataset, folder, name)}
    paths = layout.split_paths(folder, name)
    written["images"] = paths["images"]
    if is_eval_captions(dataset):
        written["coco_gt"] = layout.save_coco_gt(dataset, paths["coco_gt"])
    elif paths["coco_gt"].exists():
        paths["coco_gt"].unlink()  # stale ground truth of an earlier conversion
    return written
