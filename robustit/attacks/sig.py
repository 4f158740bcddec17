"""SIG (Barni et al., 2019): a horizontal sinusoid added to every row of the image.

``v(i, j) = delta * sin(2 pi j f / m)`` with ``delta = 40`` (of 255), ``f = 6`` periods and ``m``
the image width, added to all three channels and clipped (BackdoorBench's ``sig``). The signal is
defined relative to the width, so it scales with the image by construction.

Note: the RobustIT paper's text describes SIG as perturbing "DCT coefficients"; the standard SIG
(and every toolkit the paper's harness draws on) is this pixel-space sinusoid, which is what is
implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from ..config import check_range
from . import functional as Fn
from .base import ATTACKS, Attack, AttackConfig


@dataclass
class SIGConfig(AttackConfig):
    """SIG parameters.

    Attributes:
        delta: amplitude on the 0-255 scale (40).
        frequency: periods across the image width (6).
    """

    delta: float = 40.0
    frequency: float = 6.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("delta", self.delta, 0, 255, lo_open=True)
        check_range("frequency", self.frequency, 0, lo_open=True)


@ATTACKS.register("sig")
class SIG(Attack):
    """Additive horizontal sinusoid; see :class:`SIGConfig`."""

    name = "sig"
    config_cls = SIGConfig
    config: SIGConfig

    def apply_image(self, images: torch.Tensor, ids: Optional[List[str]] = None) -> torch.Tensor:
        """Add the sinusoid and clip. images: float (B, 3, H, W) in [0, 1] -> same shape."""
        Fn.check_images(images, self.name)
        h, w = images.shape[-2:]
        signal = Fn.sinusoid(h, w, self.config.delta / 255.0, self.config.frequency,
                             images.dtype, images.device)
        return Fn.add_signal(images, signal)
