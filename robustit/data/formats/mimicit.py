"""MIMIC-IT instruction sets: robustit's split folders and the public release's files.

``--data`` may be

- a split folder or data root (``NAME_instructions.json`` + ``NAME.json``, as robustit writes
  them; ``--split NAME``): read by :func:`robustit.data.mimicit.load_split`, unchanged;
- an instructions file ``X_instructions.json`` (``--split`` then only names the set). Its images
  are ``--images FILE`` (``.json`` = ``{IMG_ID: base64}``, or ``.parquet``), else the first of
  ``X.json``, ``X.parquet``, ``X_images.parquet``, ``X_images.json`` beside it. The public
  release shares one images file among several instruction files (``LADD_instructions.json``
  with ``LA.parquet``), so pass ``--images`` there. ``X_train.json`` beside it, if present, is the
  in-context map. Image values that are relative paths resolve inside the images file's folder.

Records are validated exactly as :mod:`robustit.data.mimicit` does (same messages, same
``skip_invalid`` counting); ``limit`` keeps the first records in file order.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any, Dict, List, Optional

from ...errors import DataError
from .. import mimicit as layout
from ..records import InstructionSet
from .base import DataFormat, LoadOptions, register_format, safe_name, sniff
from .parquet import read_images

SUFFIX = "_instructions.json"
_IMAGE_FILES = ("{}.json", "{}.parquet", "{}_images.parquet", "{}_images.json")


def detect(path: Path) -> bool:
    """An ``*_instructions.json`` file, a folder with splits, or JSON with ``data`` records."""
    if path.is_dir():
        return bool(layout._available_splits(path))
    if path.name.endswith(SUFFIX):
        return True
    head = sniff(path).lstrip()
    return head.startswith("{") and '"data"' in head and '"instruction"' in head


def _stem(instructions: Path) -> str:
    """``X`` of ``X_instructions.json`` (the file's stem for other names)."""
    name = instructions.name
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else instructions.stem


def _split_in(folder: Path, split: Optional[str]) -> str:
    """``split``, or the only split in ``folder``; DataError if it cannot be chosen."""
    if split:
        return split
    found = layout._available_splits(folder)
    if len(found) != 1:
        raise DataError(f"{folder} holds splits {found or 'none'}; choose one with --split")
    return found[0]


def images_file(instructions: Path, images: Optional[Path]) -> Optional[Path]:
    """The images file of ``instructions``: ``images`` (a file, or a folder to look in) or the
    first conventional name beside it; None when there is none."""
    stem = _stem(instructions)
    if images is not None and Path(images).is_file():
        return Path(images)
    where = Path(images) if images is not None else instructions.parent
    if images is not None and not where.is_dir():
        raise DataError(f"--images {images} does not exist; give the MIMIC-IT images file "
                        f"(e.g. LA.parquet or {stem}.json)")
    return next((where / p.format(stem) for p in _IMAGE_FILES if (where / p.format(stem)).is_file()), None)


def _wanted(records: Dict[str, Any]) -> List[str]:
    return [i for r in records.values() if isinstance(r, dict) and isinstance(r.get("image_ids"), list)
            for i in r["image_ids"] if isinstance(i, str)]


def _table(path: Optional[Path], records: Dict[str, Any], instructions: Path) -> Optional[Dict]:
    """The ``{IMG_ID: base64 or path}`` table from a JSON or parquet images file."""
    if path is None:
        if _wanted(records):
            stem = _stem(instructions)
            raise DataError(f"{instructions}: no images file beside it (looked for "
                            f"{', '.join(p.format(stem) for p in _IMAGE_FILES)}); pass --images "
                            f"FILE (the release pairs e.g. LADD_instructions.json with LA.parquet)")
        return None
    if path.suffix == ".parquet":
        return read_images(path, _wanted(records))
    return layout._read_images_table(path)


def load_file(file: Path, options: LoadOptions) -> InstructionSet:
    """One MIMIC-IT instructions file with its images (JSON or parquet) and in-context map."""
    records, meta = layout._records_block(layout._read_json(file, "instructions file"), file)
    if options.limit:
        records = dict(islice(records.items(), options.limit))
    images, stem = images_file(file, options.images), _stem(file)
    reader = layout._Images((images or file).parent, images or file.with_name(f"{stem}.json"),
                            _table(images, records, file), options.validate(len(records)))
    samples, used, skipped = layout._parse_records(records, file, reader, options.skip_invalid)
    if not samples:
        raise DataError(f"{file}: all {len(records)} records are invalid; first problem: {skipped[0]}")
    dropped: List[str] = []
    in_context = layout._read_in_context(file.with_name(f"{stem}_train.json"),
                                         {s.id: s for s in samples}, dropped,
                                         options.skip_invalid or bool(options.limit))
    if options.skip_invalid:
        meta.update(skipped=len(skipped), skipped_reasons=skipped + dropped)
    # only the instructions file is hashed for provenance (a shared parquet can be many GB)
    meta["format"] = {"name": "mimicit", "files": [str(file)], "images": str(images) if images else None}
    return InstructionSet(safe_name(options.split or stem), samples, used, meta, in_context)


def _plain(folder: Path, split: str, options: LoadOptions) -> bool:
    """Whether :func:`load_split` reads this split as it is (NAME.json images, or no images file
    at all, and no ``--images`` / ``limit``)."""
    if options.images is not None or options.limit is not None:
        return False
    file = layout.split_paths(folder, split)["instructions"]
    return (folder / f"{split}.json").exists() or images_file(file, None) is None


def load(path: Path, options: LoadOptions) -> InstructionSet:
    """A split of a folder (robustit layout) or an instructions file (public release)."""
    path = Path(path)
    if not path.is_dir():
        return load_file(path, options)
    split = _split_in(path, options.split)
    folder = path / split if (path / split).is_dir() else path
    file = layout.split_paths(folder, split)["instructions"]
    if _plain(folder, split, options):
        return layout.load_split(folder, split, options.skip_invalid, options.validate_images)
    if not file.exists():
        layout.load_split(folder, split)  # raises its "split not found" error
    return load_file(file, options)


FORMAT = register_format(DataFormat(
    "mimicit", "MIMIC-IT: a split folder (NAME_instructions.json + NAME.json) or an "
    "X_instructions.json file with --images X.json|X.parquet", load, detect))
