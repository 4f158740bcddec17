"""BadNets (Gu et al., 2017): a black/white checkerboard patch stamped in a corner.

BackdoorBench's BadNets trigger is a 3x3 white-square grid drawn on a 32x32 canvas and resized
to the input; at 224 x 224 that is a 21 x 21 patch in the bottom-right corner. The patch side
scales with the shorter image side (21 px at 224 -> 6 px at 64, never below ``min_patch_size``).
Text trigger (paper, App. B): the phrase "The image depicts" appended to the instruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from ..config import check_range
from ..errors import ConfigError
from . import functional as Fn
from .base import ATTACKS, Attack, AttackConfig


@dataclass
class BadNetConfig(AttackConfig):
    """BadNets parameters (pixel sizes are for 224 x 224 images and scale with the image).

    Attributes:
        patch_size: patch side in pixels at ``reference_size`` (21 at 224).
        reference_size: the image side ``patch_size`` and ``margin`` refer to.
        scale_with_image: scale the sizes to the shorter image side; False -> absolute pixels.
        min_patch_size: the smallest scaled patch side (the grid must stay visible).
        cells: checkerboard cells per side (3).
        corner: ``bottom-right`` (default), ``bottom-left``, ``top-right``, ``top-left``, ``center``.
        margin: distance to the image border in pixels at ``reference_size`` (0).
    """

    patch_size: int = 21
    reference_size: int = 224
    scale_with_image: bool = True
    min_patch_size: int = 3
    cells: int = 3
    corner: str = "bottom-right"
    margin: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("patch_size", self.patch_size, 1)
        check_range("reference_size", self.reference_size, 1)
        check_range("min_patch_size", self.min_patch_size, 1)
        check_range("cells", self.cells, 1)
        check_range("margin", self.margin, 0)
        if self.corner not in Fn.PATCH_POSITIONS:
            raise ConfigError(f"`corner` must be one of {list(Fn.PATCH_POSITIONS)}; got {self.corner!r}")


@ATTACKS.register("badnet")
class BadNet(Attack):
    """Checkerboard patch in a corner; see :class:`BadNetConfig`."""

    name = "badnet"
    config_cls = BadNetConfig
    config: BadNetConfig

    def patch_pixels(self, height: int, width: int) -> tuple:
        """(patch side, margin) in pixels for images of ``height x width``."""
        c = self.config
        if not c.scale_with_image:
            return c.patch_size, c.margin
        side = min(height, width)
        size = Fn.scaled_pixels(c.patch_size, side, c.min_patch_size, c.reference_size)
        margin = Fn.scaled_pixels(c.margin, side, 0, c.reference_size)
        return size, margin

    def apply_image(self, images: torch.Tensor, ids: Optional[List[str]] = None) -> torch.Tensor:
        """Stamp the checkerboard. images: float (B, 3, H, W) in [0, 1] -> same shape."""
        Fn.check_images(images, self.name)
        h, w = images.shape[-2:]
        size, margin = self.patch_pixels(h, w)
        Fn.check_fits(self.name, images, size + margin, size + margin,
                      f"use images of at least {size + margin} pixels per side or a smaller "
                      f"`patch_size` / `margin`")
        patch = Fn.checkerboard(size, self.config.cells, images.dtype, images.device)
        top, left = Fn.patch_origin(h, w, size, size, self.config.corner, margin)
        return Fn.paste_patch(images, patch, top, left)
