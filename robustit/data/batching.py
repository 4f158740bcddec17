"""From instruction records to model inputs (shared by tuning, screening and evaluation).

* :func:`encode_pairs` renders the prompt template and tokenizes with loss on the response only;
* :class:`ImageStore` decodes every image of a split once into a uint8 tensor;
* :class:`FeatureCache` holds frozen vision features per image (computed once, reused every
  epoch) for methods that do not augment images.

They live in ``data/`` (not ``train/``) so that poisoning, screening defenses and evaluation use
them without importing the tuning loop. ``FeatureCache`` calls only ``model.encode_images``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .records import InstructionSet
from .template import PromptTemplate

IGNORE = -100


def encode_pairs(tokenizer, template: PromptTemplate, instructions: Sequence[str],
                 responses: Sequence[str], max_len: int) -> Dict[str, torch.Tensor]:
    """Tokenize (instruction, response) pairs with the template; labels only on the response.

    Returns:
        input_ids, attention_mask, labels: (B, L) long, right-padded; labels are -100 on the
        prompt and padding. Over-long prompts are cut from the left of the instruction side so
        the response (and ``<answer>``) always survive.
    """
    rows, labels = [], []
    for ins, resp in zip(instructions, responses):
        prompt, target = template.full(ins, resp)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        p_ids, t_ids = _fit(p_ids, t_ids, max_len)
        rows.append(p_ids + t_ids)
        labels.append([IGNORE] * len(p_ids) + t_ids)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    lab = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, label) in enumerate(zip(rows, labels)):
        ids[i, : len(row)], lab[i, : len(label)] = torch.tensor(row), torch.tensor(label)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def _fit(p_ids: List[int], t_ids: List[int], max_len: int) -> tuple:
    """Cut an over-long pair to ``max_len`` tokens: the response keeps at most half, the prompt
    keeps its first token (``<image>``) and its tail (which ends with ``<answer>``)."""
    if len(p_ids) + len(t_ids) <= max_len:
        return p_ids, t_ids
    t_ids = t_ids[: max(max_len // 2, max_len - len(p_ids))]
    keep_tail = max_len - len(t_ids) - 1
    return p_ids[:1] + p_ids[len(p_ids) - keep_tail:], t_ids


class ImageStore:
    """All images of a split decoded once: uint8 (N, 3, H, W) plus an id -> row index.

    ``size`` (the model's ``image_size``) resizes every image to size x size once here; without
    it, images of another size than the first are resized to the first one's. An image that
    cannot be decoded raises a DataError naming it.
    """

    def __init__(self, dataset: InstructionSet, ids: Optional[Sequence[str]] = None,
                 size: Optional[int] = None) -> None:
        ids = list(dict.fromkeys(ids if ids is not None else
                                 [i for s in dataset.samples for i in s.image_ids]))
        first = dataset.image(ids[0])
        hw = (int(size), int(size)) if size else tuple(first.shape[:2])
        self.data = torch.empty((len(ids), 3, *hw), dtype=torch.uint8)
        for k, image_id in enumerate(ids):
            arr = first if k == 0 else dataset.image(image_id)
            self.data[k] = resize_uint8(torch.from_numpy(arr).permute(2, 0, 1), hw)
        self.index = {i: k for k, i in enumerate(ids)}

    def batch(self, image_ids: Sequence[Sequence[str]]) -> torch.Tensor:
        """Float (B, T, 3, H, W) in [0, 1] for per-sample lists of T image ids."""
        rows = torch.tensor([[self.index[i] for i in ids] for ids in image_ids])
        return self.data[rows].float().div_(255.0)


def resize_uint8(image: torch.Tensor, hw: tuple) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, h, w), bilinear with antialiasing; unchanged when the size fits."""
    if tuple(image.shape[1:]) == tuple(hw):
        return image
    x = torch.nn.functional.interpolate(image[None].float(), size=hw, mode="bilinear", antialias=True,
                                        align_corners=False)
    return x[0].round_().clamp_(0, 255).to(torch.uint8)


class FeatureCache:
    """Frozen vision features per image id: float (N, P, Dv), computed in batches once."""

    def __init__(self, model, store: ImageStore, batch_size: int = 64, progress: bool = True) -> None:
        ids = list(store.index)
        feats = []
        with torch.no_grad():
            for start in tqdm(range(0, len(ids), batch_size), desc="caching vision features",
                              disable=not progress, leave=False):
                chunk = [[i] for i in ids[start:start + batch_size]]
                feats.append(model.encode_images(store.batch(chunk).to(model.device))[:, 0].cpu())
        self.data = torch.cat(feats)
        self.index = dict(store.index)

    def batch(self, image_ids: Sequence[Sequence[str]]) -> torch.Tensor:
        """(B, T, P, Dv)."""
        rows = torch.tensor([[self.index[i] for i in ids] for ids in image_ids])
        return self.data[rows]
