"""What an attack may know of the victim: frozen-feature callables built from a model.

Attacks never import models; they receive these callables in an ``AttackContext``. The
attacker's white-box access (VL-Trojan, TrojVQA's optimised patch) is to the *frozen* parts
only: the vision encoder and the frozen language model's text representation.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch

from ..attacks.base import AttackContext
from ..data.records import InstructionSet
from ..seeding import derive_seed, torch_generator
from ..data.batching import ImageStore


def vision_features_fn(model):
    """(B, 3, H, W) in [0, 1] -> (B, P, Dv) frozen vision features (differentiable in the input)."""
    def fn(images: torch.Tensor) -> torch.Tensor:
        return model.encode_images(images.unsqueeze(1))[:, 0]
    return fn


def text_features_fn(model):
    """list[str] -> (B, D): the frozen LM's last hidden state (``model.text_hidden``), mean over tokens."""

    @torch.no_grad()
    def fn(texts: List[str]) -> torch.Tensor:
        enc = model.tokenizer(list(texts), return_tensors="pt", padding=True).to(model.device)
        hidden = model.text_hidden(enc["input_ids"], enc["attention_mask"])
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
    return fn


def attack_context(dataset: InstructionSet, cache_dir: str | Path, seed: int = 0, model=None,
                   model_id: str = "none", n_images: int = 256) -> AttackContext:
    """An AttackContext with a seeded sample of clean images and, given a model, its frozen parts."""
    ids = list(dict.fromkeys(i for s in dataset.samples for i in s.image_ids))
    if not ids:
        from ..errors import DataError

        raise DataError(f"split {dataset.name!r} has no images to prepare a trigger with")
    g = torch_generator(derive_seed(seed, "attack-context", dataset.name))
    pick = [ids[i] for i in torch.randperm(len(ids), generator=g)[:n_images].tolist()]
    images = ImageStore(dataset, pick).batch([[i] for i in pick])[:, 0]
    ctx = AttackContext(cache_dir=Path(cache_dir), seed=seed, image_size=tuple(images.shape[-2:]),
                        clean_images=images, model_id=model_id, clean_texts=clean_texts(dataset, pick))
    if model is not None:
        from ..train.surrogate import surrogate_factory

        model.eval()
        ctx.vision_features = vision_features_fn(model)
        ctx.text_features = text_features_fn(model)
        ctx.surrogate = surrogate_factory(model)
    return ctx


def clean_texts(dataset: InstructionSet, image_ids: List[str]) -> List[tuple]:
    """(instruction, response) of the first sample showing each image, in ``image_ids`` order."""
    first = {}
    for s in dataset.samples:
        for image_id in s.image_ids:
            first.setdefault(image_id, (s.instruction, s.answer))
    return [first[i] for i in image_ids]


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("ROBUSTIT_CACHE", Path.home() / ".cache" / "robustit")) / "attacks"


def optional_model_id(info) -> Optional[str]:
    return None if info is None else f"{info.family}:{info.sha256[:12]}"
