"""LLaVA-style conversation JSON: ``[{"id", "image", "conversations": [{"from": "human",
"value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}]``.

How turns map to samples: every human turn and the gpt turn after it make one sample, and all
samples of a conversation show the conversation's image(s). Sample ids are ``{id}-t{k}``
(k = 1, 2, ...); ``meta`` records ``conversation``, ``turn``, ``turns`` and, as MIMIC-IT does,
``rel_ins_ids`` = the other turns of the same conversation. Earlier turns are not repeated in a
later turn's instruction (the Otter template is single-turn), so a follow-up such as "What
colour is it?" loses its antecedent: use ``limit``/filtering or first turns where that matters.
``<image>`` placeholders are removed from the text (the template places the image itself).
Roles ``human``/``user`` and ``gpt``/``assistant`` are accepted; turns must alternate.

Records without an ``image`` (text-only turns in LLaVA mixes) are left out and counted in
``meta["text_only_dropped"]``; a conversation id used twice gets ``@INDEX`` appended (counted in
``meta["renamed_ids"]``). Image paths are relative to ``--images DIR`` (LLaVA's image folder;
default: the JSON file's folder) and may not leave it. ``task`` is ``"conversation"``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

from ...errors import DataError
from ..records import InstructionSet, Sample
from .base import (Builder, DataFormat, ImageFolder, LoadOptions, image_root, read_json,
                   register_format, require, safe_name, sniff, top_list)

HUMAN, GPT = ("human", "user"), ("gpt", "assistant")
TASK = "conversation"
_FIX = ('is this a LLaVA conversation file ([{"id", "image", "conversations": [{"from", '
        '"value"}, ...]}])?')
_IMAGE_TOKEN = re.compile(r"\s*<image>\s*")


def detect(path: Path) -> bool:
    """A JSON file that starts with a list and mentions ``conversations`` early."""
    if path.is_dir() or path.suffix != ".json":
        return False
    head = sniff(path)
    return head.lstrip().startswith("[") and '"conversations"' in head


def _turn(conv: list, k: int, roles: tuple, where: str) -> str:
    """The text of ``conversations[k]``, which must come from one of ``roles``."""
    if k >= len(conv):
        raise DataError(f"{where} ends with a human turn that has no gpt answer; drop that turn "
                        f"or add the answer")
    at = f"{where}: conversations[{k}]"
    role = require(conv[k], "from", at, _FIX)
    if role not in roles:
        raise DataError(f"{at} is from {role!r}, expected {' or '.join(map(repr, roles))}: turns "
                        f"must alternate human, gpt; fix the conversation")
    return _IMAGE_TOKEN.sub(" ", require(conv[k], "value", at, _FIX)).strip()


def pairs(conv: list, where: str) -> List[Tuple[str, str]]:
    """(instruction, answer) of every human/gpt pair of one conversation."""
    out = []
    for k in range(0, len(conv), 2):
        instruction, answer = _turn(conv, k, HUMAN, where), _turn(conv, k + 1, GPT, where)
        if not instruction or not answer:
            raise DataError(f"{where}: conversations[{k}:{k + 2}] has an empty instruction or "
                            f"answer (after removing <image>); fix or drop the record")
        out.append((instruction, answer))
    if not out:
        raise DataError(f"{where}: 'conversations' is empty; fix or drop the record")
    return out


def _image_list(rec: dict, where: str) -> List[str]:
    images = rec["image"]
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
        raise DataError(f"{where}: 'image' must be a relative path or a list of them, got "
                        f"{rec['image']!r:.80}; fix or drop the record")
    return images


def _record(rec, cid: str, where: str, folder: ImageFolder) -> list:
    """One conversation -> one (Sample, images) per human/gpt pair."""
    turns = pairs(require(rec, "conversations", where, _FIX, list), where)
    paths = _image_list(rec, where)
    images = {p: folder.read(p, [p], where) for p in paths}
    ids = [f"{cid}-t{k}" for k in range(1, len(turns) + 1)]
    return [(Sample(sid, list(paths), ins, ans, TASK,
                    {"conversation": cid, "turn": k, "turns": len(turns),
                     "rel_ins_ids": [o for o in ids if o != sid]}), images)
            for k, (sid, (ins, ans)) in enumerate(zip(ids, turns), 1)]


def load(path: Path, options: LoadOptions) -> InstructionSet:
    """Every human/gpt pair of the conversations that show an image."""
    file = Path(path)
    records = top_list(read_json(file, "LLaVA conversation file"), None, file, _FIX)
    root = image_root(options.images, file.parent, f"{file.name} (the JSON file's folder)")
    folder = ImageFolder(root, options.validate(min(len(records), options.limit or len(records))))
    builder, seen, counts = Builder(options), set(), {"text_only_dropped": 0, "renamed_ids": 0}
    for i, rec in enumerate(records):
        if builder.full:
            break
        if isinstance(rec, dict) and rec.get("image") is None:
            counts["text_only_dropped"] += 1
            continue
        cid = str(rec.get("id", f"r{i}")) if isinstance(rec, dict) else f"r{i}"
        if cid in seen:
            cid, counts["renamed_ids"] = f"{cid}@{i}", counts["renamed_ids"] + 1
        seen.add(cid)
        builder.add(lambda rec=rec, cid=cid, i=i: _record(rec, cid, f"{file.name}: [{i}] (id {cid})", folder))
    meta = {"source": f"llava conversations from {file}", **counts,
            "format": {"name": "llava", "files": [str(file)], "images": str(root)}}
    return builder.finish(safe_name(options.split or file.stem), meta, file)


FORMAT = register_format(DataFormat(
    "llava", "LLaVA conversation JSON ([{id, image, conversations}]) + --images DIR; one sample "
    "per human/gpt turn pair", load, detect))
