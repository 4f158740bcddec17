"""Read and write instruction data in the MIMIC-IT layout, and COCO caption ground truth.

A split ``NAME`` lives in one folder:

- ``NAME_instructions.json``: ``{"meta": {...}, "data": {INS_ID: {"instruction", "answer",
  "image_ids", "rel_ins_ids", ...}}}``; robustit also stores ``task`` and ``meta``;
- ``NAME.json``: ``{IMG_ID: base64}``; a value may instead be a relative image *path* (ending in
  .png/.jpg/...) resolved inside the folder;
- optionally ``NAME_train.json``: ``{INS_ID: [in-context INS_IDs]}``.

Records may also name image files directly with an ``image_paths`` list. Paths never leave the
split folder: absolute paths and paths that resolve outside it are refused.

Loading real MIMIC-IT files works: unknown record keys are kept in ``Sample.meta`` and ``task``
defaults to ``"caption"``. Every problem is one :class:`DataError` naming the file, the record
and the fix; ``skip_invalid=True`` skips bad records instead and counts them in
``InstructionSet.meta["skipped"]`` (with reasons in ``meta["skipped_reasons"]``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import DataError
from ..io import atomic_path, atomic_write_json
from .records import InstructionSet, Sample, b64decode, b64encode, decode_image

#: record keys with a meaning of their own; any other key is kept in Sample.meta
_KNOWN_KEYS = ("instruction", "answer", "image_ids", "rel_ins_ids", "task", "meta", "image_paths")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
#: images are decoded at load time (validated) by default for sets smaller than this
VALIDATE_IMAGES_BELOW = 50_000
_SKIP_HINT = "(or load with skip_invalid=True / pass --skip-invalid to skip such records)"
_LOAD_ONLY_META = ("skipped", "skipped_reasons", "skipped_in_context")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------

def split_paths(folder: str | Path, name: str) -> Dict[str, Path]:
    """The files of split ``name`` in ``folder``: instructions, images, in_context, coco_gt."""
    folder = Path(folder)
    return {"instructions": folder / f"{name}_instructions.json", "images": folder / f"{name}.json",
            "in_context": folder / f"{name}_train.json", "coco_gt": folder / f"{name}_coco_gt.json"}


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise DataError(f"split name {name!r} is not usable as a file name; use letters, digits, "
                        f"'.', '_' and '-' (e.g. 'train', 'test-a')")


def _available_splits(folder: Path) -> List[str]:
    """Split names in ``folder`` and, as ``sub/NAME``, in its subfolders (a data root)."""
    if not folder.is_dir():
        return []
    found = [p.relative_to(folder).as_posix()[: -len("_instructions.json")]
             for pattern in ("*_instructions.json", "*/*_instructions.json")
             for p in folder.glob(pattern)]
    return sorted(found)


def _resolve_inside(folder: Path, rel: str, where: str) -> Path:
    """``folder / rel`` if it stays inside ``folder`` and is a file; else DataError."""
    p = Path(rel)
    if p.is_absolute():
        raise DataError(f"{where}: image path {rel!r} is absolute; image paths must be relative "
                        f"to the split folder {folder}: move the image into it {_SKIP_HINT}")
    root = folder.resolve()
    full = (root / p).resolve()
    if root != full and root not in full.parents:
        raise DataError(f"{where}: image path {rel!r} leaves the dataset root {folder} (it "
                        f"resolves to {full}); keep images inside the split folder {_SKIP_HINT}")
    if not full.is_file():
        raise DataError(f"{where}: image file {rel!r} does not exist under {folder}; add it or "
                        f"drop the record {_SKIP_HINT}")
    return full


def _is_path_value(value: str) -> bool:
    # base64 never contains '.', so a value ending in '.png' can only be a path
    return len(value) < 4096 and value.lower().endswith(_IMAGE_SUFFIXES)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def _read_json(path: Path, what: str) -> Any:
    """Parse ``path``; an unparsable file is always an error (never skipped)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist; build or copy the split there "
                        f"(robustit data build --out DIR) or fix --data/--split") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg}); the file is truncated or corrupt: re-create it (e.g. "
                        f"robustit data build --force) or repair it") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        f"re-create the file") from None


def _records_block(raw: Any, path: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(records, file meta) of an instructions file."""
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
        raise DataError(f"{path}: expected an object {{\"meta\": {{...}}, \"data\": {{INS_ID: "
                        f"record}}}} (MIMIC-IT layout); got {type(raw).__name__} without a "
                        f"'data' object. Convert the file to that layout")
    meta = raw.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError(f"{path}: 'meta' must be an object, got {type(meta).__name__}; "
                        f"replace it with {{}}")
    if not raw["data"]:
        raise DataError(f"{path}: the split is empty ('data' holds no records); build it again "
                        f"or choose another split")
    return raw["data"], dict(meta)


class _Images:
    """Resolves image ids to validated bytes, once per image (shared images decode once)."""

    def __init__(self, folder: Path, path: Path, table: Optional[Dict[str, Any]], validate: bool):
        self.folder, self.path, self.table, self.validate = folder, path, table, validate
        self._done: Dict[str, Any] = {}  # image id -> bytes or the DataError it raised

    def get(self, image_id: str, record_id: str) -> bytes:
        """Bytes of ``image_id`` for ``record_id``; DataError names both and the images file."""
        if image_id not in self._done:
            try:
                self._done[image_id] = self._load(image_id, record_id)
            except DataError as exc:
                self._done[image_id] = exc
        got = self._done[image_id]
        if isinstance(got, DataError):
            raise DataError(f"record {record_id!r}: {got}") from None
        return got

    def _load(self, image_id: str, record_id: str) -> bytes:
        where = f"{self.path}: image {image_id!r}"
        if self.table is None:
            raise DataError(f"images file {self.path} does not exist, but image {image_id!r} "
                            f"is used; copy the images file next to the instructions "
                            f"{_SKIP_HINT}")
        if image_id not in self.table:
            raise DataError(f"image id {image_id!r} is not in the images file {self.path}; add "
                            f"the image or drop the record {_SKIP_HINT}")
        value = self.table[image_id]
        if not isinstance(value, str):
            raise DataError(f"{where}: expected a base64 string or a relative path, got "
                            f"{type(value).__name__}; re-create the images file {_SKIP_HINT}")
        if _is_path_value(value):
            data = _resolve_inside(self.folder, value, where).read_bytes()
        else:
            data = b64decode(value, where=where)
        return self.check(data, where)

    def check(self, data: bytes, where: str) -> bytes:
        if self.validate:
            decode_image(data, where=where)  # raises for corrupt, unknown or oversized images
        return data

    def from_path(self, rel: str, record_id: str, where: Path) -> bytes:
        label = f"{where}: record {record_id!r}"
        return self.check(_resolve_inside(self.folder, rel, label).read_bytes(),
                          f"{label}: image file {rel!r}")


def _string_list(value: Any, key: str, rid: str, path: Path) -> List[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{path}: record {rid!r}: {key!r} must be a list of strings, got "
                        f"{value!r:.80}; fix the record {_SKIP_HINT}")
    return list(value)


def _check_fields(rid: str, rec: Any, path: Path) -> None:
    if not isinstance(rec, dict):
        raise DataError(f"{path}: record {rid!r} is a {type(rec).__name__}, not an object; "
                        f"fix or drop it {_SKIP_HINT}")
    for key in ("instruction", "answer"):
        if key not in rec:
            raise DataError(f"{path}: record {rid!r} has no {key!r}; every record needs "
                            f"'instruction' and 'answer' strings: add it or drop the record "
                            f"{_SKIP_HINT}")
        if not isinstance(rec[key], str):
            raise DataError(f"{path}: record {rid!r}: {key!r} must be a string, got "
                            f"{type(rec[key]).__name__}; fix the record {_SKIP_HINT}")
    if not isinstance(rec.get("task", "caption"), str):
        raise DataError(f"{path}: record {rid!r}: 'task' must be a string such as 'caption' or "
                        f"'vqa'; fix the record {_SKIP_HINT}")
    if not isinstance(rec.get("meta", {}), dict):
        raise DataError(f"{path}: record {rid!r}: 'meta' must be an object; fix the record "
                        f"{_SKIP_HINT}")


def _record_meta(rec: Dict[str, Any], rid: str, path: Path) -> Dict[str, Any]:
    """The record's ``meta`` plus its unknown keys (real MIMIC-IT extras) and rel_ins_ids."""
    meta = dict(rec.get("meta") or {})
    for key, value in rec.items():
        if key not in _KNOWN_KEYS:
            meta[key] = value
    rel = _string_list(rec.get("rel_ins_ids", []), "rel_ins_ids", rid, path)
    if rel:
        meta["rel_ins_ids"] = rel
    return meta


def _parse_record(rid: str, rec: Any, path: Path, images: _Images) -> Tuple[Sample, Dict[str, bytes]]:
    """One record -> (Sample, the images it uses)."""
    _check_fields(rid, rec, path)
    image_ids = _string_list(rec.get("image_ids", []), "image_ids", rid, path)
    used: Dict[str, bytes] = {}
    if "image_paths" in rec:
        paths = _string_list(rec["image_paths"], "image_paths", rid, path)
        # the paths name the images; their ids are image_ids when those pair up, else the paths
        ids = image_ids if len(image_ids) == len(paths) else paths
        for iid, rel in zip(ids, paths):
            used[iid] = images.from_path(rel, rid, path)
        image_ids = ids
    else:
        for iid in image_ids:
            used[iid] = images.get(iid, rid)
    sample = Sample(str(rid), image_ids, rec["instruction"], rec["answer"],
                    rec.get("task", "caption"), _record_meta(rec, rid, path))
    return sample, used


def _read_images_table(path: Path) -> Optional[Dict[str, Any]]:
    """The images file, or None when it is absent (fine if every record uses image_paths)."""
    if not path.exists():
        return None
    table = _read_json(path, "images file")
    if not isinstance(table, dict):
        raise DataError(f"{path}: expected an object {{IMG_ID: base64}}, got "
                        f"{type(table).__name__}; re-create the images file")
    return table


def _read_in_context(path: Path, kept: Dict[str, Sample], dropped: List[str],
                     skip_invalid: bool) -> Optional[Dict[str, List[str]]]:
    """``NAME_train.json`` restricted to kept records; unknown ids are errors unless skipping
    (then the entry is dropped and its reason appended to ``dropped``)."""
    if not path.exists():
        return None
    raw = _read_json(path, "in-context file")
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object {{INS_ID: [INS_ID, ...]}}, got "
                        f"{type(raw).__name__}; re-create or delete the file")
    out: Dict[str, List[str]] = {}
    for rid, ids in raw.items():
        ids = _string_list(ids, "in-context ids", rid, path)
        unknown = [i for i in [rid, *ids] if i not in kept]
        if unknown:
            msg = (f"{path}: entry {rid!r} refers to record(s) {unknown[:3]} that are not in "
                   f"the split; remove the entry or add the records {_SKIP_HINT}")
            if not skip_invalid:
                raise DataError(msg)
            dropped.append(msg)
            continue
        out[rid] = ids
    return out


def load_split(folder: str | Path, name: str, skip_invalid: bool = False,
               validate_images: Optional[bool] = None) -> InstructionSet:
    """Read split ``name`` from ``folder`` (MIMIC-IT layout; robustit's or the original files).

    Args:
        folder: the folder holding ``NAME_instructions.json`` and ``NAME.json``.
        name: the split name.
        skip_invalid: skip records with missing fields, missing/corrupt/oversized images or
            unsafe paths; count them in ``meta["skipped"]`` with reasons in
            ``meta["skipped_reasons"]``. An unparsable file is still an error.
        validate_images: decode every referenced image once at load time; ``None`` -> on for
            sets with fewer than :data:`VALIDATE_IMAGES_BELOW` images. Always on when skipping.

    Raises:
        DataError: naming the file, the record id and the fix.
    """
    _check_name(name)
    folder = Path(folder)
    paths = split_paths(folder, name)
    if not paths["instructions"].exists():
        found = _available_splits(folder)
        raise DataError(f"split {name!r} not found: {paths['instructions']} does not exist "
                        f"(splits in {folder}: {found or 'none'}); check --data/--split or build "
                        f"the data with `robustit data build`")
    records, file_meta = _records_block(_read_json(paths["instructions"], "instructions file"),
                                        paths["instructions"])
    table = _read_images_table(paths["images"])
    n_images = len(table) if table is not None else len(records)
    validate = skip_invalid or (n_images < VALIDATE_IMAGES_BELOW if validate_images is None
                                else validate_images)
    samples, images, skipped = _parse_records(records, paths["instructions"],
                                              _Images(folder, paths["images"], table, validate),
                                              skip_invalid)
    if not samples:
        raise DataError(f"{paths['instructions']}: all {len(records)} records are invalid, the "
                        f"split would be empty; first problem: {skipped[0]}")
    kept = {s.id: s for s in samples}
    dropped: List[str] = []
    in_context = _read_in_context(paths["in_context"], kept, dropped, skip_invalid)
    if skip_invalid:  # recorded only when asked for, so load -> save round-trips byte-exactly
        file_meta["skipped"] = len(skipped)
        file_meta["skipped_reasons"] = skipped + dropped
        if dropped:
            file_meta["skipped_in_context"] = len(dropped)
    return InstructionSet(name, samples, images, file_meta, in_context)


def _parse_records(records: Dict[str, Any], path: Path, images: _Images,
                   skip_invalid: bool) -> Tuple[List[Sample], Dict[str, bytes], List[str]]:
    samples: List[Sample] = []
    used: Dict[str, bytes] = {}
    skipped: List[str] = []
    for rid, rec in records.items():
        try:
            sample, imgs = _parse_record(rid, rec, path, images)
        except DataError as exc:
            if not skip_invalid:
                raise
            skipped.append(str(exc))
            continue
        samples.append(sample)
        used.update(imgs)
    return samples, used, skipped


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _record(sample: Sample) -> Dict[str, Any]:
    meta = {k: v for k, v in sample.meta.items() if k != "rel_ins_ids"}
    return {"instruction": sample.instruction, "answer": sample.answer,
            "image_ids": list(sample.image_ids),
            "rel_ins_ids": list(sample.meta.get("rel_ins_ids", [])),
            "task": sample.task, "meta": meta}


def _check_writable(dataset: InstructionSet) -> None:
    if not dataset.samples:
        raise DataError(f"split {dataset.name!r} has no samples; refusing to write an empty split")
    ids = set()
    for s in dataset.samples:
        if s.id in ids:
            raise DataError(f"split {dataset.name!r}: record id {s.id!r} occurs twice; ids must "
                            f"be unique (rename one)")
        ids.add(s.id)
        missing = [i for i in s.image_ids if i not in dataset.images]
        if missing:
            raise DataError(f"split {dataset.name!r}: record {s.id!r} uses image(s) {missing[:3]} "
                            f"that are not in dataset.images; add them before saving")


def _write_images(path: Path, images: Dict[str, bytes]) -> None:
    """``{IMG_ID: base64}``, one image per line, streamed (a large set never sits in one string)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("{")
            for k, (image_id, data) in enumerate(images.items()):
                f.write(("," if k else "") + f"\n{json.dumps(image_id)}: \"{b64encode(data)}\"")
            f.write("\n}\n")


def save_split(dataset: InstructionSet, folder: str | Path, name: Optional[str] = None) -> Path:
    """Write ``dataset`` as split ``name`` (default ``dataset.name``) into ``folder``.

    Each file is written atomically; the images (and in-context) files are written before the
    instructions file, which is what a reader opens first, so an interrupted save never leaves
    an instructions file pointing at images that are not there. A stale in-context file of a
    previous save is removed when ``dataset.in_context`` is None.

    Returns:
        The path of ``NAME_instructions.json``.
    """
    name = name or dataset.name
    _check_name(name)
    _check_writable(dataset)
    paths = split_paths(folder, name)
    Path(folder).mkdir(parents=True, exist_ok=True)
    _write_images(paths["images"], dataset.images)
    if dataset.in_context is not None:
        atomic_write_json(paths["in_context"], dataset.in_context, indent=None)
    elif paths["in_context"].exists():
        paths["in_context"].unlink()
    # skip counts describe one load, not the data: a later load must not report them again
    meta = {k: v for k, v in dataset.meta.items() if k not in _LOAD_ONLY_META}
    doc = {"meta": meta, "data": {s.id: _record(s) for s in dataset.samples}}
    atomic_write_json(paths["instructions"], doc, indent=1)
    return paths["instructions"]


def coco_ground_truth(dataset: InstructionSet) -> Dict[str, Any]:
    """COCO caption ground truth of the captioning samples (``image_id`` = the sample id).

    Raises:
        DataError: when the set has no captioning samples, or one has no references.
    """
    images, annotations = [], []
    for s in dataset.samples:
        if s.task != "caption":
            continue
        refs = s.meta.get("references")
        if not refs or not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise DataError(f"split {dataset.name!r}: caption record {s.id!r} has no "
                            f"meta['references'] (a list of reference captions); COCO ground "
                            f"truth needs them: add references or evaluate another split")
        images.append({"id": s.id})
        for ref in refs:
            annotations.append({"image_id": s.id, "id": len(annotations) + 1, "caption": ref})
    if not images:
        raise DataError(f"split {dataset.name!r} has no captioning samples (task 'caption'); "
                        f"COCO caption ground truth cannot be written for it")
    return {"info": {"description": f"robustit caption ground truth of split {dataset.name}"},
            "licenses": [], "type": "captions", "images": images, "annotations": annotations}


def save_coco_gt(dataset: InstructionSet, path: str | Path) -> Path:
    """Write COCO caption ground truth (pycocoevalcap format) of ``dataset``'s captions.

    Each captioning sample is one COCO "image" whose id is the sample id, with one annotation
    per reference in ``meta["references"]``; other tasks are left out.
    """
    atomic_write_json(path, coco_ground_truth(dataset), indent=None)
    return Path(path)
