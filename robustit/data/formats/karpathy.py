"""COCO and Flickr30k captioning in Karpathy's splits (``dataset_coco.json``,
``dataset_flickr30k.json``, also ``dataset_flickr8k.json``).

File: ``{"images": [{"filepath"?, "filename", "split", "imgid", "cocoid"?, "sentids",
"sentences": [{"raw", "tokens", ...}]}], "dataset": "coco"}``; ``split`` is one of
``train``, ``restval``, ``val``, ``test`` (COCO test: 5,000 images; Flickr30k test: 1,000).

One sample per image of the chosen split(s): id = image id = the file name's stem
(``COCO_val2014_000000391895``, ``1000092795``), instruction = :data:`CAPTION_INSTRUCTION`,
answer = the first reference, ``meta["references"]`` = every ``raw`` sentence (stripped).
Images are read from ``--images DIR`` as ``DIR/filepath/filename`` (COCO: ``filepath`` is
``val2014`` / ``train2014``), falling back to ``DIR/filename``; the default folder is the one
holding the JSON file.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

from ...errors import DataError
from ..records import InstructionSet, Sample
from ..world import CAPTION_INSTRUCTIONS
from .base import (Builder, DataFormat, ImageFolder, LoadOptions, image_root, read_json,
                   register_format, require, safe_name, sniff, top_list)

#: the instruction of every Karpathy sample (the first of the world's captioning paraphrases)
CAPTION_INSTRUCTION = CAPTION_INSTRUCTIONS[0]
SPLITS = ("train", "restval", "val", "test")
_FIX = "is this a Karpathy split file (dataset_coco.json / dataset_flickr30k.json)?"
_FILE_RE = re.compile(r"^dataset_[A-Za-z0-9]+\.json$")


def detect(path: Path) -> bool:
    """A ``dataset_*.json`` file (or a folder holding one), or JSON with ``sentences``."""
    if path.is_dir():
        return bool(_files(path))
    if _FILE_RE.match(path.name):
        return True
    head = sniff(path)
    return '"sentences"' in head and '"filename"' in head


def _files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.glob("dataset_*.json") if _FILE_RE.match(p.name))


def _the_file(path: Path) -> Path:
    """``path`` itself, or the one Karpathy file in folder ``path``."""
    if not path.is_dir():
        return path
    files = _files(path)
    if len(files) != 1:
        found = [f.name for f in files] or "none"
        raise DataError(f"{path}: expected one Karpathy file dataset_*.json in the folder, found "
                        f"{found}; pass the file itself as --data")
    return files[0]


def parse_splits(split) -> Tuple[str, ...]:
    """``"test"`` or ``"train+restval"`` -> the Karpathy split names; DataError otherwise."""
    parts = tuple(p.strip() for p in str(split or "").replace(",", "+").split("+") if p.strip())
    bad = [p for p in parts if p not in SPLITS]
    if not parts or bad:
        raise DataError(f"Karpathy split {split!r} is not one of {list(SPLITS)} (join several "
                        f"with '+', e.g. train+restval); pass --split test for evaluation")
    return parts


def _check_present(entries: list, wanted: Tuple[str, ...], file: Path) -> int:
    """How many entries belong to ``wanted``; DataError when none does."""
    present = Counter(e.get("split") for e in entries if isinstance(e, dict))
    n = sum(present[w] for w in wanted)
    if not n:
        have = {str(k): v for k, v in present.items()}
        raise DataError(f"{file}: no image of split {'+'.join(wanted)} (splits in the file: "
                        f"{have}); choose one of those with --split")
    return n


def _record(i: int, entry, wanted, images: ImageFolder, file: Path):
    """One ``images[i]`` entry -> [(Sample, {id: bytes})], or [] for other splits."""
    where = f"{file.name}: images[{i}]"
    if require(entry, "split", where, _FIX) not in wanted:
        return []
    filename = require(entry, "filename", where, _FIX)
    where = f"{where} ({filename})"
    sentences = require(entry, "sentences", where, _FIX, list)
    refs = [require(s, "raw", f"{where}: sentences[{j}]", _FIX).strip() for j, s in enumerate(sentences)]
    if not refs or not all(refs):
        raise DataError(f"{where} has an empty reference sentence or none; evaluation needs "
                        f"its references: fix or drop the record")
    folder = require(entry, "filepath", where, _FIX) if "filepath" in entry else ""
    sid = Path(filename).stem
    data = images.read(sid, [f"{folder}/{filename}", filename] if folder else [filename], where)
    keep = {k: entry[k] for k in ("imgid", "cocoid", "filepath", "filename", "split") if k in entry}
    sample = Sample(sid, [sid], CAPTION_INSTRUCTION, refs[0], "caption",
                    {"references": refs, "karpathy": keep})
    return [(sample, {sid: data})]


def load(path: Path, options: LoadOptions) -> InstructionSet:
    """The chosen Karpathy split(s) of ``path`` as a captioning set."""
    file = _the_file(Path(path))
    wanted = parse_splits(options.split)
    raw = read_json(file, "Karpathy split file", "pass dataset_coco.json or dataset_flickr30k.json")
    entries = top_list(raw, "images", file, _FIX)
    n = _check_present(entries, wanted, file)
    root = image_root(options.images, file.parent, f"{file.name} (the JSON file's folder)")
    images = ImageFolder(root, options.validate(n))
    builder = Builder(options)
    for i, entry in enumerate(entries):
        if builder.full:
            break
        builder.add(lambda i=i, entry=entry: _record(i, entry, wanted, images, file))
    dataset = raw.get("dataset", file.stem.replace("dataset_", ""))
    meta: Dict = {"source": f"karpathy {dataset} ({'+'.join(wanted)}) from {file}",
                  "format": {"name": "karpathy", "files": [str(file)], "images": str(root),
                             "split": "+".join(wanted), "dataset": dataset,
                             "instruction": CAPTION_INSTRUCTION}}
    return builder.finish(safe_name("+".join(wanted)), meta, file)


FORMAT = register_format(
    DataFormat("karpathy", "COCO / Flickr30k Karpathy splits: dataset_coco.json or "
               "dataset_flickr30k.json (+ --images DIR); --split test|val|train|restval",
               load, detect),
    "coco-karpathy", "flickr30k-karpathy")
