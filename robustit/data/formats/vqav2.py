"""VQAv2: a questions file joined with its annotations file, COCO images from a folder.

- questions: ``v2_OpenEnded_mscoco_val2014_questions.json`` = ``{"data_subtype": "val2014",
  "questions": [{"image_id", "question", "question_id"}], ...}``
- annotations: ``v2_mscoco_val2014_annotations.json`` = ``{"annotations": [{"question_id",
  "image_id", "answers": [{"answer", "answer_confidence", "answer_id"}],
  "multiple_choice_answer", "answer_type", "question_type"}], ...}``
- images: ``COCO_val2014_%012d.jpg`` in ``--images DIR`` (or ``DIR/val2014/``; default: the
  folder ``val2014/`` beside the JSON files, else their folder); ``%012d.jpg`` also works.

``--data`` may be either file (the other is found beside it) or the folder holding both, with
``--split`` naming the COCO subset (default ``val2014``). One sample per question: id = the
question id, instruction = the question as written, answer = ``multiple_choice_answer``,
``meta["answers"]`` = the ten human answers (VQA accuracy), plus question and answer types.
Test questions (``test2015``) have no public annotations and cannot be loaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ...errors import DataError
from ..records import InstructionSet, Sample
from .base import (Builder, DataFormat, ImageFolder, LoadOptions, image_root, read_json,
                   register_format, require, safe_name, sniff, top_list)

DEFAULT_SUBSET = "val2014"
_SUBSET_RE = re.compile(r"((?:train|val|test-dev|test)\d{4})")
_QFIX = "is this the VQAv2 questions file (v2_OpenEnded_mscoco_val2014_questions.json)?"
_AFIX = "is this the VQAv2 annotations file (v2_mscoco_val2014_annotations.json)?"
_KINDS = ("questions", "annotations")


def detect(path: Path) -> bool:
    """A ``*_questions.json`` / ``*_annotations.json`` with question ids, or a folder of them."""
    if path.is_dir():
        return any(path.glob("*_questions.json"))
    if path.name.endswith("_questions.json"):
        return True
    head = sniff(path)
    return path.suffix == ".json" and head.lstrip().startswith("{") and '"question_id"' in head


def _kind(path: Path) -> str:
    """``questions`` or ``annotations``: from the name, else from the first bytes."""
    for kind in _KINDS:
        if path.name.endswith(f"{kind}.json"):
            return kind
    return "questions" if '"questions"' in sniff(path) else "annotations"


def _find(folder: Path, subset: Optional[str], kind: str) -> Path:
    """The one ``*SUBSET*KIND.json`` in ``folder`` (v2 / OpenEnded preferred); DataError if none."""
    pattern = f"*{subset}*{kind}.json" if subset else f"*{kind}.json"
    found = sorted(folder.glob(pattern))
    for prefer in ("v2", "OpenEnded"):
        found = [p for p in found if prefer in p.name] or found
    if len(found) == 1:
        return found[0]
    example = f"v2_mscoco_{subset or DEFAULT_SUBSET}_{kind}.json"
    if not found:
        have = sorted({m for p in folder.glob("*.json") for m in _SUBSET_RE.findall(p.name)})
        raise DataError(f"{folder}: no VQAv2 {kind} file for {subset or 'any subset'} (looked for "
                        f"{pattern}, e.g. {example}; subsets there: {have or 'none'}); "
                        f"copy it there or choose another --split")
    raise DataError(f"{folder}: several VQAv2 {kind} files match {subset}: "
                    f"{[p.name for p in found]}; keep one or pass --data FILE")


def pair_files(path: Path, split: Optional[str]) -> Tuple[Path, Path, Optional[str]]:
    """(questions file, annotations file, subset) from a file or a folder and ``--split``."""
    if path.is_dir():
        subset = split or DEFAULT_SUBSET
        return _find(path, subset, "questions"), _find(path, subset, "annotations"), subset
    match = _SUBSET_RE.search(path.name)
    subset = match.group(1) if match else None
    if split and subset and split != subset:
        raise DataError(f"{path} holds VQAv2 {subset}, but --split is {split!r}; pass --split "
                        f"{subset} (or the {split} file)")
    kind = _kind(path)
    other = _find(path.parent, subset, _KINDS[1 - _KINDS.index(kind)])
    return (path, other, subset) if kind == "questions" else (other, path, subset)


def _index(afile: Path, skip_invalid: bool) -> Dict[int, Tuple[int, dict]]:
    """question id -> (position in the annotations list, annotation)."""
    anns = top_list(read_json(afile, "VQAv2 annotations file"), "annotations", afile, _AFIX)
    out: Dict[int, Tuple[int, dict]] = {}
    for i, ann in enumerate(anns):
        try:
            out[require(ann, "question_id", f"{afile.name}: annotations[{i}]", _AFIX, int)] = (i, ann)
        except DataError:
            if not skip_invalid:
                raise
    return out


def _answers(ann: dict, where: str) -> Tuple[List[str], str]:
    """(the human answers, the multiple-choice answer) of one annotation."""
    raw = require(ann, "answers", where, _AFIX, list)
    answers = [require(a, "answer", f"{where}: answers[{k}]", _AFIX) for k, a in enumerate(raw)]
    if not answers:
        raise DataError(f"{where}: 'answers' is empty; VQA accuracy needs the human answers: "
                        f"fix or drop the record")
    return answers, require(ann, "multiple_choice_answer", where, _AFIX)


class _Join:
    """Turns ``questions[i]`` into a sample with its annotation and image."""

    def __init__(self, qfile: Path, afile: Path, subset: Optional[str], anns, images: ImageFolder):
        self.qfile, self.afile, self.subset, self.anns, self.images = qfile, afile, subset, anns, images

    def __call__(self, i: int, q) -> list:
        where = f"{self.qfile.name}: questions[{i}]"
        qid = require(q, "question_id", where, _QFIX, int)
        where = f"{where} (question_id {qid})"
        question = require(q, "question", where, _QFIX).strip()
        image_id = require(q, "image_id", where, _QFIX, int)
        if qid not in self.anns:
            raise DataError(f"{where} has no annotation in {self.afile}; test questions have no "
                            f"public answers: use the val2014/train2014 questions with their "
                            f"annotations file")
        j, ann = self.anns[qid]
        awhere = f"{self.afile.name}: annotations[{j}] (question_id {qid})"
        if ann.get("image_id", image_id) != image_id:
            raise DataError(f"{where} is about image {image_id} but {awhere} about image "
                            f"{ann.get('image_id')}; the two files come from different releases")
        answers, best = _answers(ann, awhere)
        stem = f"COCO_{self.subset}_{image_id:012d}" if self.subset else f"{image_id:012d}"
        data = self.images.read(stem, [f"{stem}.jpg", f"{self.subset}/{stem}.jpg",
                                       f"{image_id:012d}.jpg"], where)
        meta = {"answers": answers, "question_type": ann.get("question_type"),
                "answer_type": ann.get("answer_type"), "question_id": qid, "coco_image_id": image_id}
        return [(Sample(str(qid), [stem], question, best, "vqa", meta), {stem: data})]


def load(path: Path, options: LoadOptions) -> InstructionSet:
    """The questions of one VQAv2 subset with their answers and images."""
    qfile, afile, subset = pair_files(Path(path), options.split)
    qraw = read_json(qfile, "VQAv2 questions file")
    questions = top_list(qraw, "questions", qfile, _QFIX)
    subset = subset or (qraw.get("data_subtype") if isinstance(qraw.get("data_subtype"), str) else None)
    anns = _index(afile, options.skip_invalid)
    near = qfile.parent / subset if subset and (qfile.parent / subset).is_dir() else qfile.parent
    root = image_root(options.images, near, f"VQAv2 {subset or ''}")
    join = _Join(qfile, afile, subset, anns, ImageFolder(root, options.validate(
        min(len(questions), options.limit or len(questions)))))
    builder = Builder(options)
    for i, q in enumerate(questions):
        if builder.full:
            break
        builder.add(lambda i=i, q=q: join(i, q))
    meta = {"source": f"vqav2 {subset or ''} from {qfile}",
            "format": {"name": "vqav2", "files": [str(qfile), str(afile)], "images": str(root),
                       "split": subset}}
    return builder.finish(safe_name(subset or qfile.stem), meta, qfile)


FORMAT = register_format(DataFormat(
    "vqav2", "VQAv2 questions + annotations JSON (+ --images DIR of COCO_val2014_*.jpg); "
    "--split val2014|train2014", load, detect))
