"""Auxiliary scene supervision for pretraining the embedded model's vision path.

Real LVLMs start from a vision encoder pretrained on its own; the embedded model trains its
vision encoder from scratch together with everything else, and from the caption loss alone the
ViT + perceiver path learned to find small objects on busy backgrounds far too slowly (measured:
after 1,500 steps the LM loss with shuffled images was only 0.012 above the loss with the right
images). This module gives the vision path its own signal during pretraining: a linear head on
the pooled perceiver output predicts the scene's attributes (multi-hot, binary cross-entropy),
read from the world's ``meta["scene"]``. The head belongs to the pretraining method and is never
part of the shipped model.

Two poolings (``SceneHead(pool=...)``): ``mean`` (the shipped base) averages the adapter's latents
before the linear head, so nothing rewards a latent for keeping *where* something is; ``latents``
reads the concatenated latents (mean over images only), so the per-cell attributes can only be
predicted if the latents keep local detail. The second was tried for issue 3's calibration (can
a small corner patch implant?); re-pretrained bases carried the patch with either pooling, so it
is not what decides that (docs/results.md, "Re-pretraining the base").
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..data.world import COLOURS, SHAPES


def attribute_vocabulary() -> List[str]:
    """Names of the predicted attributes: colours, shapes, colour-shape pairs, per-cell colours
    and shapes, and the object count."""
    cells = [f"{r}{c}" for r in range(3) for c in range(3)]
    vocab = [f"colour:{c}" for c in COLOURS] + [f"shape:{s}" for s in SHAPES]
    vocab += [f"object:{c}-{s}" for c in COLOURS for s in SHAPES]
    vocab += [f"cell{p}:{c}" for p in cells for c in COLOURS]
    vocab += [f"cell{p}:{s}" for p in cells for s in SHAPES]
    return vocab + [f"count:{n}" for n in (1, 2, 3)]


def scene_attributes(scene: dict) -> List[str]:
    out = []
    for o in scene["objects"]:
        cell = f"{o['row']}{o['col']}"
        out += [f"colour:{o['colour']}", f"shape:{o['shape']}", f"object:{o['colour']}-{o['shape']}",
                f"cell{cell}:{o['colour']}", f"cell{cell}:{o['shape']}"]
    return out + [f"count:{len(scene['objects'])}"]


POOLINGS = ("mean", "latents")


class SceneHead(nn.Module):
    """Linear head: pooled adapter features -> attribute logits (B, K).

    Args:
        width: the adapter's output width D.
        pool: ``mean`` (features (B, D): mean over images and latents) or ``latents`` (features
            (B, N * D): mean over images, latents concatenated in order).
        num_latents: N, needed for ``latents``.
    """

    def __init__(self, width: int, pool: str = "mean", num_latents: Optional[int] = None) -> None:
        super().__init__()
        if pool not in POOLINGS:
            raise ValueError(f"scene head pool must be one of {POOLINGS}; got {pool!r}")
        if pool == "latents" and not num_latents:
            raise ValueError("scene head pool 'latents' needs num_latents")
        self.pool = pool
        self.vocab = attribute_vocabulary()
        self.index = {a: i for i, a in enumerate(self.vocab)}
        self.linear = nn.Linear(width * (num_latents if pool == "latents" else 1), len(self.vocab))

    def features(self, adapter_out: torch.Tensor) -> torch.Tensor:
        """(B, T, N, D) -> (B, D) for ``mean``, (B, N * D) for ``latents``."""
        if self.pool == "mean":
            return adapter_out.mean(dim=(1, 2))
        return adapter_out.mean(dim=1).flatten(1)

    def targets(self, metas: Sequence[dict]) -> Optional[torch.Tensor]:
        """Multi-hot (B, K), rows of -1 where a sample has no scene (ignored); None if none has."""
        rows = torch.full((len(metas), len(self.vocab)), -1.0)
        for i, meta in enumerate(metas):
            if "scene" in meta:
                rows[i] = 0.0
                for a in scene_attributes(meta["scene"]):
                    if a in self.index:
                        rows[i, self.index[a]] = 1.0
        return rows if (rows[:, 0] >= 0).any() else None

    def loss(self, adapter_out: torch.Tensor, metas: Sequence[dict]) -> Optional[torch.Tensor]:
        """BCE of the attributes from adapter_out (B, T, N, D) pooled by ``features``, summed over the
        attributes and averaged over samples: a mean over the 283 mostly rare labels is so small
        that it carries no weight against the LM loss (see benchmarks/attribute_probe.py)."""
        targets = self.targets(metas)
        if targets is None:
            return None
        targets = targets.to(adapter_out.device)
        logits = self.linear(self.features(adapter_out))
        keep = targets[:, 0] >= 0
        bce = F.binary_cross_entropy_with_logits(logits[keep], targets[keep], reduction="none")
        return bce.sum(dim=1).mean()
