"""FTrojan (Wang et al., 2022): an invisible trigger in the frequency domain.

The standard trigger (BackdoorBench ``ftrojan``): convert the image to YUV (here BT.601
full-range YCbCr, as OpenCV's ``COLOR_RGB2YCrCb`` used by the reference code), take the
orthonormal 2-D DCT of every 32 x 32 tile, add ``magnitude = 30`` (on the 0-255 scale) at the
frequency positions (15, 15) and (31, 31) of the U and V channels, invert, convert back, clip.
The VL-Trojan harness instead used magnitude 50 at (31, 31) on all channels (pass
``magnitude=50, positions=[[31, 31]], channels=[0, 1, 2]``).

Image sizes: the tile stays 32 x 32 (FTrojan uses 32 for both CIFAR's 32 x 32 and ImageNet's
224 x 224 inputs): a 224 image has 7 x 7 tiles, a 64 image 2 x 2. For images whose shorter side
is below ``block_size`` the tile shrinks to that side and the positions are mapped
proportionally (``(u + 1) * block / 32 - 1``: (15, 15), (31, 31) -> (7, 7), (15, 15) in a 16
tile). A partial tile at the bottom / right border is left unchanged, as in the reference code.

Note: the RobustIT paper's text calls the FTrojan trigger "optimized pixels"; the standard FTrojan
trigger (implemented here) is this fixed, unoptimised frequency pattern.
Text trigger (paper, App. B): "The image depicts" appended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from ..config import check_range
from ..errors import ConfigError
from . import functional as Fn
from .base import ATTACKS, Attack, AttackConfig

#: the smallest tile side (and so the smallest image side) FTrojan is applied to
MIN_BLOCK = 8


@dataclass
class FTrojanConfig(AttackConfig):
    """FTrojan parameters.

    Attributes:
        magnitude: DCT coefficient increase on the 0-255 scale (30).
        block_size: DCT tile side (32); capped by the shorter image side.
        positions: (u, v) frequency positions inside a ``block_size`` tile.
        channels: channel indices; in YCbCr 0 = Y, 1 = Cb (U), 2 = Cr (V).
        color_space: ``"ycbcr"`` (standard) or ``"rgb"``.
    """

    magnitude: float = 30.0
    block_size: int = 32
    positions: Tuple = ((15, 15), (31, 31))
    channels: Tuple = (1, 2)
    color_space: str = "ycbcr"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("magnitude", self.magnitude, 0, lo_open=True)
        check_range("block_size", self.block_size, MIN_BLOCK)
        try:
            self.positions = tuple((int(u), int(v)) for u, v in self.positions)
        except (TypeError, ValueError):
            raise ConfigError(f"`positions` must be a list of [u, v] pairs; got {self.positions!r}") from None
        bad = [p for p in self.positions if not all(0 <= x < self.block_size for x in p)]
        if not self.positions or bad:
            raise ConfigError(f"`positions` must be non-empty (u, v) pairs in [0, {self.block_size}); "
                              f"got {list(self.positions)}")
        self.channels = tuple(int(c) for c in self.channels)
        if not self.channels or any(c not in (0, 1, 2) for c in self.channels):
            raise ConfigError(f"`channels` must be non-empty indices in {{0, 1, 2}}; got {self.channels}")
        if self.color_space not in ("ycbcr", "rgb"):
            raise ConfigError(f"`color_space` must be 'ycbcr' or 'rgb'; got {self.color_space!r}")


@ATTACKS.register("ftrojan")
class FTrojan(Attack):
    """Fixed block-DCT frequency trigger; see :class:`FTrojanConfig`."""

    name = "ftrojan"
    config_cls = FTrojanConfig
    config: FTrojanConfig

    def block_and_positions(self, height: int, width: int) -> tuple:
        """(tile side, positions in that tile) for images of ``height x width``."""
        c = self.config
        block = min(c.block_size, height, width)
        return block, Fn.scale_positions(c.positions, block, c.block_size)

    def apply_image(self, images: torch.Tensor, ids: Optional[List[str]] = None) -> torch.Tensor:
        """Add the frequency trigger. images: float (B, 3, H, W) in [0, 1] -> same shape."""
        Fn.check_images(images, self.name)
        Fn.check_fits(self.name, images, MIN_BLOCK, MIN_BLOCK,
                      f"FTrojan needs DCT tiles of at least {MIN_BLOCK}x{MIN_BLOCK}; use larger images")
        block, positions = self.block_and_positions(*images.shape[-2:])
        return Fn.frequency_trigger(images, block, positions, self.config.magnitude / 255.0,
                                    self.config.channels, ycbcr=self.config.color_space == "ycbcr")
