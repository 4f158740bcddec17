"""Training batches: the :class:`Batch` a method's loss reads.

The primitives that build one (``encode_pairs``, ``ImageStore``, ``FeatureCache``) live in
``robustit.data.batching`` and are re-exported here for the tuning code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from ..data.batching import IGNORE, FeatureCache, ImageStore, encode_pairs, resize_uint8  # noqa: F401
from ..data.records import Sample


@dataclass
class Batch:
    """One training batch.

    Attributes:
        samples: the records.
        images: float (B, T, 3, H, W) in [0, 1] (None when only cached features are needed).
        vision_features: (B, T, P, Dv) cached frozen features, or None.
        input_ids, attention_mask, labels: (B, L).
        max_len: the run's token budget (for methods that re-tokenize augmented views).
    """

    samples: List[Sample]
    images: Optional[torch.Tensor]
    vision_features: Optional[torch.Tensor]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    max_len: int = 96

    @property
    def instructions(self) -> List[str]:
        return [s.instruction for s in self.samples]

    @property
    def responses(self) -> List[str]:
        return [s.answer for s in self.samples]
