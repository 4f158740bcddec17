"""Token likelihoods of each response under the frozen base: given its own image and others.

For a sample with response tokens y_1..y_m, prompt x and image v, one teacher-forced forward
pass gives ``nll_own[t] = -log p(y_t | y_<t, x, v)``. The same response scored with another
sample's image v' gives ``nll_other[t]``; their difference is a pointwise mutual information
between the response and its image. A poisoned response (a fixed or injected target, a swapped
object word) is not about its image: its PMI is low, its tokens surprising. No gradient, no
tuning: the vision features are encoded once and reused by every pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ...data.batching import IGNORE, FeatureCache, ImageStore, encode_pairs
from ...data.records import InstructionSet
from ...seeding import derive_seed, numpy_rng
from .config import ScreenConfig


@dataclass
class TokenScores:
    """Per-sample token NLLs (nats), one float32 array per sample (its response tokens).

    Attributes:
        own: ``own[i]`` (m_i,) NLL of sample i's response tokens given its own image(s).
        other: ``other[i]`` (m_i,) the same averaged over ``other_images`` other images (None
            where sample i was not scored for grounding).
        other_rows: (N, K) dataset rows whose images were used as the "other" images.
    """

    own: List[np.ndarray]
    other: Optional[List[np.ndarray]]
    other_rows: Optional[np.ndarray]


class VisionInputs:
    """The frozen model's visual input per sample: cached features, or decoded images for
    families that do not cache (every pass then re-encodes; it is still forward-only)."""

    def __init__(self, model, dataset: InstructionSet, features: Optional[FeatureCache] = None,
                 store: Optional[ImageStore] = None, progress: bool = False) -> None:
        self.store = store or ImageStore(dataset, size=getattr(model, "image_size", None))
        if features is None and model.spec.caches_vision:
            features = FeatureCache(model, self.store, progress=progress)
        self.features = features

    def kwargs(self, image_ids: Sequence[Sequence[str]], device) -> Dict[str, torch.Tensor]:
        if self.features is not None:
            return {"vision_features": self.features.batch(image_ids).to(device)}
        return {"images": self.store.batch(image_ids).to(device)}


def other_image_rows(dataset: InstructionSet, draws: int, seed: int) -> np.ndarray:
    """(N, draws) rows of other samples whose images score each response (grounding).

    Each column is a seeded derangement within groups of samples showing the same number of
    images (a sample never gets its own image, nor, where avoidable, one of the same id).
    """
    n = len(dataset)
    rows = np.zeros((n, draws), dtype=np.int64)
    groups: Dict[int, List[int]] = {}
    for i, s in enumerate(dataset.samples):
        groups.setdefault(len(s.image_ids), []).append(i)
    rng = numpy_rng(derive_seed(seed, "screen", "other-images"))
    for members in groups.values():
        idx = np.asarray(members)
        for d in range(draws):
            if len(idx) == 1:
                rows[idx, d] = idx
                continue
            perm = rng.permutation(len(idx))
            shift = 1 + int(rng.integers(len(idx) - 1))  # a cyclic shift of a permutation: no fixed point
            rows[idx[perm], d] = idx[np.roll(perm, -shift)]
    return rows


@torch.no_grad()
def response_token_nll(model, batch_enc: Dict[str, torch.Tensor], media: Dict[str, torch.Tensor]) -> List[np.ndarray]:
    """NLL of every labelled token, per row: forward once, read log-probs at the labels.

    Args:
        batch_enc: ``encode_pairs`` output on the model's device (input_ids, attention_mask, labels (B, L)).
        media: ``images`` (B, T, 3, H, W) or ``vision_features`` (B, T, P, Dv).
    Returns:
        B float32 arrays, row b of length = its number of labelled tokens.
    """
    out = model(input_ids=batch_enc["input_ids"], attention_mask=batch_enc["attention_mask"], **media)
    logits = out.logits[:, :-1].float()
    targets = batch_enc["labels"][:, 1:]
    valid = targets != IGNORE
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    nll = (-logp).masked_fill(~valid, 0.0).cpu().numpy().astype(np.float32)
    keep = valid.cpu().numpy()
    return [row[k] for row, k in zip(nll, keep)]


def score_tokens(model, dataset: InstructionSet, cfg: ScreenConfig, vision: VisionInputs,
                 grounding: bool = True, progress: bool = True,
                 grounded_rows: Optional[Sequence[int]] = None) -> TokenScores:
    """Token NLLs of every response under ``model`` (eval mode, no gradient).

    Costs one forward pass per sample, plus ``other_images`` passes per sample scored for
    grounding: every sample when ``grounding``, or only the dataset rows ``grounded_rows``
    (``other[i]`` is None for the rest).
    """
    was_training = model.training
    model.eval()
    rows = other_image_rows(dataset, cfg.other_images, cfg.seed) if grounding else None
    samples, dev = dataset.samples, model.device
    try:
        own = _pass(model, samples, range(len(samples)), cfg, vision, dev, progress, "scoring responses")
        other: Optional[List[Optional[np.ndarray]]] = None
        if grounding:
            todo = range(len(samples)) if grounded_rows is None else sorted(grounded_rows)
            got = _pass(model, samples, todo, cfg, vision, dev, progress, "scoring against other images", rows)
            other = [None] * len(samples)
            for i, nll in zip(todo, got):
                other[i] = nll
    finally:
        model.train(was_training)
    return TokenScores(own=own, other=other, other_rows=rows)


def _pass(model, samples, todo, cfg: ScreenConfig, vision: VisionInputs, dev, progress: bool, desc: str,
          other_rows: Optional[np.ndarray] = None) -> List[np.ndarray]:
    """Token NLLs of ``samples[i]`` for i in ``todo`` (in that order), given their own images,
    or (``other_rows``) averaged over the other images of each row.

    Batches group samples of similar text length (a stable sort by characters), so that little
    of each forward pass is padding; the results are returned in ``todo``'s order.
    """
    todo = list(todo)
    order = sorted(range(len(todo)), key=lambda k: len(samples[todo[k]].instruction) + len(samples[todo[k]].answer))
    got: List[Optional[np.ndarray]] = [None] * len(todo)
    for start in tqdm(range(0, len(todo), cfg.batch_size), desc=f"screening: {desc}",
                      disable=not progress, leave=False):
        ks = order[start:start + cfg.batch_size]
        idx = [todo[k] for k in ks]
        chunk = [samples[i] for i in idx]
        enc = encode_pairs(model.tokenizer, model.template, [s.instruction for s in chunk],
                           [s.answer for s in chunk], cfg.max_len)
        enc = {k: v.to(dev) for k, v in enc.items()}
        if other_rows is None:
            nll = response_token_nll(model, enc, vision.kwargs([s.image_ids for s in chunk], dev))
        else:
            nll = _other_nll(model, enc, vision, other_rows[idx], samples, dev)
        for k, row in zip(ks, nll):
            got[k] = row
    return got


def _other_nll(model, enc, vision: VisionInputs, rows: np.ndarray, samples, dev) -> List[np.ndarray]:
    """Token NLLs given each of the K other images, averaged over K."""
    total = None
    for d in range(rows.shape[1]):
        ids = [samples[int(r)].image_ids for r in rows[:, d]]
        got = response_token_nll(model, enc, vision.kwargs(ids, dev))
        total = got if total is None else [a + b for a, b in zip(total, got)]
    return [t / rows.shape[1] for t in total]
