"""Blended (Chen et al., 2017): the image is alpha-blended with a fixed picture.

``x' = (1 - alpha) * x + alpha * T`` with ``T`` a natural picture resized to the input
(bilinear, antialiased, deterministic). ``alpha = 0.2`` follows BackdoorBench; the VL-Trojan
harness used 0.1 (pass ``alpha=0.1``).

The original trigger is a Hello Kitty picture, which no installed package ships. The default
here is the scikit-image logo (``skimage.data.logo()``, 500 x 500, opaque): a colourful drawn
graphic that is part of the scikit-image wheel itself (no download), so, like Hello Kitty, it is
a cartoon-like picture with strong edges and saturated colour. It is chosen over a photograph
because the embedded world uses scikit-image's photographs (Chelsea the cat, the astronaut, ...)
as clean backgrounds: a trigger that clean images also contain would not be a trigger. Any
picture file can be given with ``trigger_path``.
Text trigger (paper, App. B): "The image depicts" appended.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..config import check_range
from ..errors import ConfigError
from . import functional as Fn
from .base import ATTACKS, Attack, AttackConfig

#: the default blend picture: skimage.data.<name>()
DEFAULT_BLEND_PICTURE = "logo"


def load_picture(path: str | Path, argument: str) -> np.ndarray:
    """Load any picture file as uint8 (H, W, 3) RGB.

    Args:
        path: a file PIL can read (PNG, JPEG, ...).
        argument: the option name, for the error message.
    Raises:
        ConfigError: naming ``argument`` and ``path`` when the file is missing or unreadable.
    """
    from PIL import Image

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"`{argument}`: picture {str(p)!r} does not exist; give the path of a "
                          f"PNG/JPEG file")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Exception as exc:  # PIL raises many types for unreadable files
        raise ConfigError(f"`{argument}`: picture {str(p)!r} could not be loaded "
                          f"({type(exc).__name__}: {exc}); give a valid PNG/JPEG file") from None


def shipped_photo(name: str = DEFAULT_BLEND_PICTURE) -> np.ndarray:
    """A real photograph shipped inside scikit-image (``logo``, ``chelsea``, ``astronaut``, ...).

    Returns:
        uint8 (H, W, 3) RGB.
    """
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


@dataclass
class BlendedConfig(AttackConfig):
    """Blended parameters.

    Attributes:
        alpha: blend ratio in (0, 1] (0.2, BackdoorBench; 0.1 in VL-Trojan).
        trigger_path: picture file to blend in; None -> ``skimage.data.logo()``.
    """

    alpha: float = 0.2
    trigger_path: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("alpha", self.alpha, 0, 1, lo_open=True)
        if self.trigger_path is not None:
            load_picture(self.trigger_path, "trigger_path")  # fail at configuration time


@ATTACKS.register("blended")
class Blended(Attack):
    """Alpha blending with a fixed picture; see :class:`BlendedConfig`."""

    name = "blended"
    config_cls = BlendedConfig
    config: BlendedConfig

    def __init__(self, config: Optional[BlendedConfig] = None) -> None:
        super().__init__(config)
        c = self.config
        picture = (load_picture(c.trigger_path, "trigger_path") if c.trigger_path
                   else shipped_photo(DEFAULT_BLEND_PICTURE))
        self.picture = to_tensor(picture)  # (3, h, w) at the picture's own size
        self.picture_sha256 = hashlib.sha256(np.ascontiguousarray(picture).tobytes()).hexdigest()
        self._resized: Dict[Tuple[int, int], torch.Tensor] = {}

    def describe(self) -> Dict[str, Any]:
        """Parameters plus the blend picture's identity (source, size, hash of its pixels)."""
        d = super().describe()
        source = self.config.trigger_path or f"skimage.data.{DEFAULT_BLEND_PICTURE}()"
        d["trigger_picture"] = {"source": source, "size": list(self.picture.shape[-2:]),
                                "pixels_sha256": self.picture_sha256}
        return d

    def trigger_for(self, height: int, width: int) -> torch.Tensor:
        """The blend picture resized to ``height x width``: float32 (3, H, W) in [0, 1]."""
        key = (height, width)
        if key not in self._resized:
            self._resized[key] = Fn.resize_image(self.picture, height, width)
        return self._resized[key]

    def apply_image(self, images: torch.Tensor, ids: Optional[List[str]] = None) -> torch.Tensor:
        """Blend. images: float (B, 3, H, W) in [0, 1] -> same shape."""
        Fn.check_images(images, self.name)
        trigger = self.trigger_for(*images.shape[-2:])
        return Fn.blend(images, trigger, self.config.alpha)
