"""What a screening defense does with the flagged samples: drop them, or repair their response.

Repair sources, tried in order for ``source="auto"`` (a recorded reading, docs/audit.md):
``references`` (another reference caption the record carries: COCO / Flickr30k have five; the
one the frozen base finds most likely given the image is not needed, the first differing one
is taken), ``answers`` (the most common VQA annotator answer the record carries), ``generate``
(the frozen base's own greedy response to the sample's image and instruction: BYORn's repair,
which needs nothing from the data). An attacker who also rewrites a record's other references
defeats the first two; ``generate`` does not rely on them.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ...data.records import InstructionSet, Sample
from ...errors import ConfigError
from .signals import words

ACTIONS = ("drop", "repair", "keep")
SOURCES = ("auto", "references", "answers", "generate")


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"`{name}` must be one of {list(choices)}; got {value!r}")
    return value


def from_record(sample: Sample, source: str) -> Optional[str]:
    """A replacement response the record itself carries (None when it has none)."""
    current = tuple(words(sample.answer))
    if source in ("auto", "references"):
        refs = [r for r in sample.meta.get("references") or [] if isinstance(r, str) and r.strip()]
        other = [r for r in refs if tuple(words(r)) != current]
        if other:
            return other[0]
    if source in ("auto", "answers"):
        answers = [a for a in sample.meta.get("answers") or [] if isinstance(a, str) and a.strip()]
        answers = [a for a in answers if tuple(words(a)) != current]
        if answers:
            return Counter(answers).most_common(1)[0][0]
    return None


@torch.no_grad()
def generate_responses(model, samples: List[Sample], vision, batch_size: int = 32,
                       max_new_tokens: int = 24, progress: bool = False) -> List[str]:
    """The frozen model's greedy responses to each (one-image) sample's image and instruction."""
    was = model.training
    model.eval()
    out: List[str] = []
    try:
        for start in tqdm(range(0, len(samples), batch_size), desc="screening: repairing",
                          disable=not progress, leave=False):
            chunk = samples[start:start + batch_size]
            prompts = model.prompts([s.instruction for s in chunk])
            out += model.generate(prompts, max_new_tokens=max_new_tokens,
                                  **vision.kwargs([s.image_ids for s in chunk], model.device))
    finally:
        model.train(was)
    return out


def apply_decisions(dataset: InstructionSet, flagged: np.ndarray, action: str, source: str,
                    model=None, vision=None, progress: bool = False) -> Tuple[InstructionSet, Dict]:
    """The data to tune on: flagged samples dropped, repaired or kept.

    Returns:
        (new set, record): record has per-action counts and, per repaired id, the source used.
    """
    check_choice("action", action, ACTIONS)
    check_choice("repair_source", source, SOURCES)
    idx = [i for i, f in enumerate(flagged) if f]
    if action == "keep" or not idx:
        return dataset, {"action": action, "n_flagged": len(idx), "changed": 0}
    if action == "drop":
        keep = [s for i, s in enumerate(dataset.samples) if not flagged[i]]
        return dataset.subset(keep), {"action": "drop", "n_flagged": len(idx), "dropped": len(idx)}
    samples = [copy.copy(s) for s in dataset.samples]
    used: Dict[str, str] = {}
    pending, drop = [], set()
    for i in idx:
        text = None if source == "generate" else from_record(samples[i], source)
        if text is None and source in ("auto", "generate") and len(samples[i].image_ids) == 1:
            pending.append(i)
            continue
        if text is None and source in ("auto", "generate"):
            drop.add(i)  # a multi-image prompt has no zero-shot rendering to generate from
            continue
        if text is None:
            raise ConfigError(f"sample {samples[i].id!r} carries no {source} to repair with; use "
                              f"repair_source=auto or generate")
        samples[i], used[samples[i].id] = dataclasses.replace(samples[i], answer=text), source_name(samples[i], source)
    if pending:
        texts = generate_responses(model, [samples[i] for i in pending], vision, progress=progress)
        for i, text in zip(pending, texts):
            samples[i] = dataclasses.replace(samples[i], answer=text or samples[i].answer)
            used[samples[i].id] = "generate"
    counts = Counter(used.values())
    repaired = InstructionSet(dataset.name, samples, dataset.images, dict(dataset.meta), dataset.in_context)
    if drop:
        repaired = repaired.subset([s for i, s in enumerate(samples) if i not in drop])
    return repaired, {"action": "repair", "n_flagged": len(idx), "repaired": dict(counts),
                      "dropped": len(drop), "source_by_id": used}


def source_name(sample: Sample, source: str) -> str:
    if source != "auto":
        return source
    return "references" if sample.meta.get("references") else "answers"
