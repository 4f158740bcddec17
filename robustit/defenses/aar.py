"""Anomalous Activation Regularization (AAR, RobustIT Sec. 3.4).

AAR watches the channels D of the adapter's visual features X (B, T, N, D) at one hook point
(default: the perceiver resampler output, before the cross-attention layers read it), keeps the
k = floor(gamma * D) channels that are least active on average (momentum beta over batches) and
zeroes the others. Eq. 12's "+ ||psi||" is read as: the masked features replace the adapter
features in the forward pass (no extra loss term).

The maths and the stateful mask live in :mod:`robustit.models.masks` (the model owns its masks,
and models never import defenses); this module holds the configuration and the builders.

Integration (the training loop)::

    cfg = AARConfig(gamma=0.5, beta=0.9)                    # hook_point None: the adapter output
    D = model.hook_point_width(cfg.hook_point)
    model.add_channel_mask(cfg.hook_point, make_channel_mask(cfg, width=D))
    loss = model(...).loss      # forward opens model.masks_active(): train(): update + mask
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from ..config import check_range
from ..errors import ConfigError
from ..models.masks import (  # noqa: F401  (re-exported: AAR's maths)
    ChannelMask,
    abs_sum_and_count,
    batch_importance,
    channel_mask_hooks,
    keep_count,
    momentum_update,
    paused_tracking,
    topk_mask,
)

__all__ = [
    "AARConfig",
    "make_channel_mask",
    "make_channel_masks",
    "activation_statistics",
    "mask_summary",
    "batch_importance",
    "momentum_update",
    "topk_mask",
    "keep_count",
    "ChannelMask",
    "channel_mask_hooks",
    "paused_tracking",
]


@dataclass
class AARConfig:
    """AAR settings (paper defaults).

    Attributes:
        gamma: channel keep ratio in (0, 1]; k = floor(gamma * D) channels are kept (0.5).
        beta: momentum of the global importance in [0, 1] (0.9); 0 uses only the current batch,
            1 never moves g from its initial zeros (the mask then keeps channels 0..k-1).
        hook_point: name of the model's hook point (a key of ``FamilySpec.hook_points``) whose
            output channels are masked; None (default): the model's default hook point, its
            adapter output (``perceiver`` for the embedded model and IDEFICS, ``projector`` for
            LLaVA, ``projection`` for BLIP-2).
        apply_at_inference: whether the mask also acts in eval mode (saved in the checkpoint as
            the mask's ``enabled`` buffer). The paper applies it at inference.
    """

    gamma: float = 0.5
    beta: float = 0.9
    hook_point: Optional[str] = None
    apply_at_inference: bool = True

    def __post_init__(self) -> None:
        check_range("aar.gamma", self.gamma, 0.0, 1.0, lo_open=True)
        check_range("aar.beta", self.beta, 0.0, 1.0)
        if self.hook_point is not None and (not isinstance(self.hook_point, str) or not self.hook_point):
            raise ConfigError(f"`aar.hook_point` must be a non-empty hook point name such as "
                              f"'perceiver'; got {self.hook_point!r}")
        if not isinstance(self.apply_at_inference, bool):
            raise ConfigError(f"`aar.apply_at_inference` must be true or false; got {self.apply_at_inference!r}")


def make_channel_mask(cfg: AARConfig, width: int) -> ChannelMask:
    """A fresh tracking ChannelMask for a hook point with ``width`` channels.

    Raises:
        ConfigError: when floor(gamma * width) < 1.
    """
    return ChannelMask(width, gamma=cfg.gamma, beta=cfg.beta, enabled=cfg.apply_at_inference,
                       tracking=True)


def make_channel_masks(cfg: AARConfig, widths: Mapping[str, int]) -> nn.ModuleDict:
    """``nn.ModuleDict`` hook-point name -> ChannelMask, for ``model.channel_masks``."""
    return nn.ModuleDict({name: make_channel_mask(cfg, width) for name, width in widths.items()})


@torch.no_grad()
def activation_statistics(x: Tensor) -> Tensor:
    """Per-channel mean |x| over every leading dim (for the activation plot); = -batch importance.

    Args:
        x: activations (..., D), e.g. adapter features (B, T, N, D).

    Returns:
        (D,) float32.
    """
    total, count = abs_sum_and_count(x)
    return (total / max(count, 1)).float()


def mask_summary(mask: ChannelMask) -> dict:
    """JSON-ready facts about a mask for results and reports."""
    return {
        "width": mask.width,
        "gamma": mask.gamma,
        "beta": mask.beta,
        "k": mask.k,
        "kept": int((mask.mask != 0).sum().item()),
        "steps": int(mask.steps.item()),
        "enabled": bool(mask.enabled.item()),
        "kept_channels": mask.kept_channels().tolist(),
    }
