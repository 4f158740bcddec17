"""Defenses: RobustIT's IDR (input diversity + consistency loss) and AAR (channel masks).

* :mod:`robustit.defenses.idr`: ``IDRConfig``, ``VisualAugment`` (A^v), ``TextAugment`` (A^t),
  ``consistency_loss`` (L_imc), ``pooled_embedding``, ``label_conflicts``.
* :mod:`robustit.defenses.aar`: ``AARConfig`` and builders around
  :mod:`robustit.models.masks` (``ChannelMask``, ``channel_mask_hooks``).
* :mod:`robustit.defenses.synonyms`: ``SynonymSource`` (local WordNet or the shipped table).
"""

from .aar import (
    AARConfig,
    ChannelMask,
    activation_statistics,
    batch_importance,
    channel_mask_hooks,
    keep_count,
    make_channel_mask,
    make_channel_masks,
    mask_summary,
    momentum_update,
    paused_tracking,
    topk_mask,
)
from .idr import (
    IDRConfig,
    TextAugment,
    VisualAugment,
    consistency_loss,
    label_conflicts,
    pooled_embedding,
)
from .synonyms import SynonymSource

__all__ = [
    "AARConfig",
    "ChannelMask",
    "activation_statistics",
    "batch_importance",
    "channel_mask_hooks",
    "keep_count",
    "make_channel_mask",
    "make_channel_masks",
    "mask_summary",
    "momentum_update",
    "paused_tracking",
    "topk_mask",
    "IDRConfig",
    "TextAugment",
    "VisualAugment",
    "consistency_loss",
    "label_conflicts",
    "pooled_embedding",
    "SynonymSource",
]
