"""Defenses: RobustIT's IDR (input diversity + consistency loss) and AAR (channel masks).

* :mod:`robustit.defenses.idr`: ``IDRConfig``, ``VisualAugment`` (A^v), ``TextAugment`` (A^t),
  ``consistency_loss`` (L_imc), ``pooled_embedding``, ``label_conflicts``.
* :mod:`robustit.defenses.aar`: ``AARConfig`` and builders around
  :mod:`robustit.models.masks` (``ChannelMask``, ``channel_mask_hooks``).
* :mod:`robustit.defenses.synonyms`: ``SynonymSource`` (local WordNet or the shipped table).

Baselines (paper App. F and Table 10; docs/baselines.md):

* :mod:`robustit.defenses.fineprune`: Fine-Pruning's activity measurement and fixed mask.
* :mod:`robustit.defenses.cleanclip`: CleanCLIP's augmented variants (reuses IDR's A^t / A^v).
* :mod:`robustit.defenses.prompt_filter`: ``PromptFilter`` (blacklisted tokens out at inference).
* :mod:`robustit.defenses.magnitude_prune`: ``magnitude_prune`` (adapter weights before inference).
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
from .cleanclip import CleanCLIPAugment, CleanCLIPConfig
from .fineprune import FinePruneConfig
from .magnitude_prune import magnitude_prune
from .prompt_filter import PromptFilter
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
    "CleanCLIPAugment",
    "CleanCLIPConfig",
    "FinePruneConfig",
    "magnitude_prune",
    "PromptFilter",
]
