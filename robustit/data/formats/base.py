"""What every format loader shares: the format registry, load options, JSON reading with clear
errors, image files read from a local folder, and the builder that collects samples (skipping
and counting bad records when asked).

Nothing here downloads anything: every path is local, and images are kept as the encoded bytes
found on disk (the model's processor resizes them later).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ...errors import DataError
from ...registry import Registry
from ..mimicit import VALIDATE_IMAGES_BELOW
from ..records import InstructionSet, Sample, decode_image

SKIP_HINT = "(or pass --skip-invalid / skip_invalid=True to skip such records)"
_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")
#: how much of a JSON file is read to recognise its format
SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True)
class LoadOptions:
    """How to load: which split, where the images are, how many samples, what to do with bad ones.

    Attributes:
        split: the split to select (Karpathy: test/val/train/restval, ``+``-joined; VQAv2: the
            COCO subset such as ``val2014``; MIMIC-IT folder: the split name); formats without
            splits (LLaVA, a MIMIC-IT instructions file) use it as the set's name.
        images: an image folder, or a MIMIC-IT images file (``.json`` / ``.parquet``).
        limit: keep only the first ``limit`` samples (None: all).
        skip_invalid: skip bad records (missing fields, missing or corrupt images) and count them.
        validate_images: decode every image at load time; None: when fewer than
            :data:`VALIDATE_IMAGES_BELOW` records (always when skipping).
    """

    split: Optional[str] = None
    images: Optional[Path] = None
    limit: Optional[int] = None
    skip_invalid: bool = False
    validate_images: Optional[bool] = None

    def validate(self, n_records: int) -> bool:
        if self.skip_invalid:
            return True
        return n_records < VALIDATE_IMAGES_BELOW if self.validate_images is None else self.validate_images


@dataclass(frozen=True)
class DataFormat:
    """One public data format.

    Attributes:
        name: the ``--format`` name.
        summary: one line for help texts: what files it reads.
        load: ``load(path, options) -> InstructionSet``.
        detect: ``detect(path) -> bool``: cheap recognition from file names and the first
            :data:`SNIFF_BYTES` of a JSON file.
    """

    name: str
    summary: str
    load: Callable[[Path, LoadOptions], InstructionSet]
    detect: Callable[[Path], bool]


FORMATS: Registry[DataFormat] = Registry("data format")


def register_format(fmt: DataFormat, *aliases: str) -> DataFormat:
    """Register ``fmt`` under its name and any aliases."""
    for name in (fmt.name, *aliases):
        FORMATS.register(name)(fmt)
    return fmt


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def read_json(path: Path, what: str, fix: str = "") -> Any:
    """Parse ``path``; DataError naming the file (and line/column) otherwise. Never skipped."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist{'; ' + fix if fix else ''}") from None
    except IsADirectoryError:
        raise DataError(f"{what} {path} is a folder, not a JSON file{'; ' + fix if fix else ''}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg}); the file is truncated or corrupt: copy it again") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); is it "
                        f"really the {what}? Copy it again") from None


def sniff(path: Path) -> str:
    """The first :data:`SNIFF_BYTES` of a file as text ('' if unreadable)."""
    try:
        with open(path, "rb") as f:
            return f.read(SNIFF_BYTES).decode("utf-8", errors="ignore")
    except OSError:
        return ""


def safe_name(text: str) -> str:
    """``text`` made usable as a split / file name (``train+restval`` -> ``train-restval``)."""
    name = _NAME_RE.sub("-", str(text)).strip("-.") or "data"
    return name if name[0].isalnum() else "d" + name


def require(rec: Any, key: str, where: str, fix: str, kind: type = str) -> Any:
    """``rec[key]`` when ``rec`` is an object holding a ``kind`` there; else a DataError
    "WHERE has no 'KEY'; FIX" (or "... must be a KIND")."""
    if not isinstance(rec, dict):
        raise DataError(f"{where} is a {type(rec).__name__}, not an object; {fix} {SKIP_HINT}")
    if key not in rec:
        raise DataError(f"{where} has no {key!r}; {fix} {SKIP_HINT}")
    if not isinstance(rec[key], kind):
        raise DataError(f"{where}: {key!r} must be a {kind.__name__}, got "
                        f"{type(rec[key]).__name__}; {fix} {SKIP_HINT}")
    return rec[key]


def top_list(raw: Any, key: Optional[str], path: Path, fix: str) -> list:
    """The list ``raw[key]`` (or ``raw`` itself when ``key`` is None) of a file; DataError if not."""
    value = raw.get(key) if key is not None and isinstance(raw, dict) else (raw if key is None else None)
    if not isinstance(value, list):
        what = f"a top-level {key!r} list" if key else "a JSON list at the top"
        raise DataError(f"{path}: expected {what}, got {type(raw).__name__}"
                        f"{' without it' if key and isinstance(raw, dict) else ''}; {fix}")
    if not value:
        raise DataError(f"{path}: {key or 'the list'} is empty; nothing to load ({fix})")
    return value


# --------------------------------------------------------------------------------------------
# Images in a folder
# --------------------------------------------------------------------------------------------

class ImageFolder:
    """Reads image files below one root folder, once per image id, validated on request.

    Relative paths may not leave the root (absolute paths and ``..`` that escape it are refused).
    """

    def __init__(self, root: Path, validate: bool, option: str = "--images"):
        self.root, self.validate, self.option = Path(root), validate, option
        self._cache: Dict[str, Any] = {}

    def read(self, image_id: str, candidates: Sequence[str], where: str) -> bytes:
        """Bytes of the first candidate path that exists; DataError naming ``where`` otherwise."""
        if image_id not in self._cache:
            try:
                self._cache[image_id] = self._load(candidates, where)
            except DataError as exc:
                self._cache[image_id] = exc
        got = self._cache[image_id]
        if isinstance(got, DataError):
            raise DataError(f"{where}: {got}") from None
        return got

    def _load(self, candidates: Sequence[str], where: str) -> bytes:
        root = self.root.resolve()
        for rel in candidates:
            full = self._inside(root, rel)
            if full.is_file():
                data = full.read_bytes()
                if self.validate:
                    decode_image(data, where=f"image file {full}")
                return data
        also = f" (also tried {', '.join(str(self.root / c) for c in candidates[1:3])})" \
            if len(candidates) > 1 else ""
        raise DataError(f"image file {self.root / candidates[0]} does not exist{also}; point "
                        f"{self.option} at the folder that holds the images, copy the image "
                        f"there, or drop the record {SKIP_HINT}")

    def _inside(self, root: Path, rel: str) -> Path:
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
            raise DataError(f"image path {rel!r} must be a non-empty path relative to the image "
                            f"folder {self.root}; fix the record {SKIP_HINT}")
        full = (root / rel).resolve()
        if full != root and root not in full.parents:
            raise DataError(f"image path {rel!r} leaves the image folder {self.root}; keep images "
                            f"inside it {SKIP_HINT}")
        return full


def image_root(images: Optional[Path], default: Path, what: str) -> Path:
    """The image folder: ``images`` (must be a folder) or ``default``."""
    root = Path(images) if images is not None else default
    if not root.is_dir():
        given = "--images" if images is not None else f"the default image folder for {what}"
        raise DataError(f"{given} {root} is not a folder; pass --images DIR (the folder holding "
                        f"the image files)")
    return root


# --------------------------------------------------------------------------------------------
# Collecting samples
# --------------------------------------------------------------------------------------------

class Builder:
    """Collects samples and their images; with ``skip_invalid`` a record that raises DataError is
    skipped and its reason kept; stops accepting at ``limit`` samples."""

    def __init__(self, options: LoadOptions):
        self.options = options
        self.samples: List[Sample] = []
        self.images: Dict[str, bytes] = {}
        self.skipped: List[str] = []
        self._ids: set = set()

    @property
    def full(self) -> bool:
        return self.options.limit is not None and len(self.samples) >= self.options.limit

    def add(self, make: Callable[[], List[Tuple[Sample, Dict[str, bytes]]]]) -> None:
        """Run ``make`` (one record -> its samples with their images) and keep what it returns."""
        try:
            made = make()
            twice = [s.id for s, _ in made if s.id in self._ids]
            if twice:
                raise DataError(f"sample id {twice[0]!r} occurs twice; ids must be unique: fix "
                                f"or drop one of the records {SKIP_HINT}")
        except DataError as exc:
            if not self.options.skip_invalid:
                raise
            self.skipped.append(str(exc))
            return
        for sample, images in made:
            if self.full:
                return
            self._ids.add(sample.id)
            self.samples.append(sample)
            self.images.update(images)

    def finish(self, name: str, meta: Dict[str, Any], where: Path) -> InstructionSet:
        """The InstructionSet; DataError if nothing valid is left."""
        if not self.samples:
            first = f"; first problem: {self.skipped[0]}" if self.skipped else ""
            raise DataError(f"{where}: no valid sample was loaded{first}")
        meta = dict(meta)
        if self.options.skip_invalid:
            meta["skipped"] = len(self.skipped)
            meta["skipped_reasons"] = list(self.skipped)
        return InstructionSet(name, self.samples, self.images, meta, None)


def check_limit(limit: Optional[int]) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive number of samples, got {limit!r}")
