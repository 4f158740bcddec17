"""TrojVQA (Walmer et al., 2022): a dual-key backdoor, a visual patch plus the word "Consider".

Visual key: a square patch whose side is 10 % of the shorter image side (``int(0.1 * side)``:
22 px at 224, 6 px at 64), at the image centre, as in TrojVQA's data generator
(``solid_trigger(img, size=0.1, bgr=[255, 0, 0], pos='center')``, i.e. solid blue).
Text key: "Consider" prepended to the question. The text key is intrinsic to the attack, so it is
kept in ``image-only`` mode.

``patch="optimised"`` replaces the solid colour by a patch optimised against the frozen victim
vision encoder (``AttackContext.vision_features``, which must be differentiable w.r.t. its input)
so that patched images look like a target object to the encoder: Adam on the patch pixels
(through a sigmoid, so they stay in [0, 1]) minimises ``1 - cos(mean_P f(x + patch),
mean_P f(target))``, where ``mean_P`` pools the encoder's tokens and ``target`` is
``target_image`` (a picture of the target object) or, by default, a flat banana-yellow picture
(the paper's target response names a banana; a flat colour is only a stand-in: give a photo for
a real semantic target). TrojVQA itself optimises against its detector's object + attribute
head, which a captioning victim does not have. The result is cached in ``ctx.cache_dir`` as
safetensors + JSON, keyed by the full configuration, seed, image size and model id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ..config import check_range
from ..errors import ConfigError
from ..io import atomic_path, atomic_write_json
from ..seeding import derive_seed, torch_generator
from . import functional as Fn
from .base import ATTACKS, Attack, AttackConfig, AttackContext
from .blended import load_picture, to_tensor

#: the default target object picture colour (banana yellow) for the optimised patch
BANANA_YELLOW = (1.0, 0.88, 0.21)


@dataclass
class TrojVQAConfig(AttackConfig):
    """TrojVQA parameters.

    Attributes:
        text_position: ``prepend`` (TrojVQA's "Consider ..."); the phrase defaults to "Consider".
        patch: ``"solid"`` or ``"optimised"``.
        size: patch side as a fraction of the shorter image side (0.1).
        min_patch_size: the smallest patch side in pixels.
        color: RGB in [0, 1] of the solid patch (blue, TrojVQA's default).
        position: ``center`` (TrojVQA) or a corner name.
        target_image: picture of the target object for ``optimised``; None -> a flat ``target_color``.
        target_color: RGB in [0, 1] of the flat target picture.
        steps, lr, batch_size: Adam optimisation of the ``optimised`` patch.
    """

    text_position: str = "prepend"
    patch: str = "solid"
    size: float = 0.1
    min_patch_size: int = 2
    color: Tuple = (0.0, 0.0, 1.0)
    position: str = "center"
    target_image: Optional[str] = None
    target_color: Tuple = BANANA_YELLOW
    steps: int = 300
    lr: float = 0.1
    batch_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patch not in ("solid", "optimised"):
            raise ConfigError(f"`patch` must be 'solid' or 'optimised'; got {self.patch!r}")
        check_range("size", self.size, 0, 1, lo_open=True)
        check_range("min_patch_size", self.min_patch_size, 1)
        for name in ("color", "target_color"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3 or not all(0.0 <= v <= 1.0 for v in value):
                raise ConfigError(f"`{name}` must be three RGB values in [0, 1]; got {value}")
            setattr(self, name, value)
        if self.position not in Fn.PATCH_POSITIONS:
            raise ConfigError(f"`position` must be one of {list(Fn.PATCH_POSITIONS)}; got {self.position!r}")
        check_range("steps", self.steps, 1)
        check_range("lr", self.lr, 0, lo_open=True)
        check_range("batch_size", self.batch_size, 1)
        if self.target_image is not None:
            load_picture(self.target_image, "target_image")


@ATTACKS.register("trojvqa")
class TrojVQA(Attack):
    """Centre patch + "Consider"; see :class:`TrojVQAConfig`."""

    name = "trojvqa"
    config_cls = TrojVQAConfig
    config: TrojVQAConfig
    default_text_trigger = "Consider"
    text_trigger_intrinsic = True

    def __init__(self, config: Optional[TrojVQAConfig] = None) -> None:
        super().__init__(config)
        self.optimised_patch: Optional[torch.Tensor] = None  # (3, s, s) after prepare()

    def patch_side(self, height: int, width: int) -> int:
        """Patch side in pixels: ``max(min_patch_size, int(size * min(H, W)))``."""
        return max(self.config.min_patch_size, int(self.config.size * min(height, width)))

    # -- the visual key ------------------------------------------------------------------
    def patch_for(self, side: int, dtype: torch.dtype, device) -> torch.Tensor:
        """The patch at ``side x side`` pixels: float (3, side, side) in [0, 1]."""
        if self.config.patch == "solid":
            return Fn.solid_patch(side, self.config.color, dtype, device)
        if self.optimised_patch is None:
            raise ConfigError("trojvqa: `patch='optimised'` needs prepare(ctx) with a victim model "
                              "before apply_image; call attack.prepare(ctx) first")
        return Fn.resize_image(self.optimised_patch, side, side).to(device=device, dtype=dtype)

    def apply_image(self, images: torch.Tensor, ids: Optional[List[str]] = None) -> torch.Tensor:
        """Paste the patch. images: float (B, 3, H, W) in [0, 1] -> same shape."""
        Fn.check_images(images, self.name)
        h, w = images.shape[-2:]
        side = self.patch_side(h, w)
        Fn.check_fits(self.name, images, side, side,
                      f"use images of at least {side} pixels per side or a smaller `min_patch_size`")
        top, left = Fn.patch_origin(h, w, side, side, self.config.position)
        return Fn.paste_patch(images, self.patch_for(side, images.dtype, images.device), top, left)

    # -- the optimised patch ---------------------------------------------------------------
    def prepare(self, ctx: AttackContext) -> None:
        """Optimise (or load from the cache) the patch when ``patch == "optimised"``."""
        if self.config.patch == "solid":
            return
        if ctx.vision_features is None:
            raise ConfigError("trojvqa: `patch='optimised'` optimises the patch against the frozen "
                              "victim vision encoder, so a victim model is needed "
                              "(AttackContext.vision_features); pass a model or use patch='solid'")
        stem = Path(ctx.cache_dir) / self.cache_key(ctx)
        weights, info = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
        if weights.is_file() and info.is_file():
            from safetensors.torch import load_file

            self.optimised_patch = load_file(str(weights))["patch"]
            return
        patch, loss = self._optimise(ctx)
        self._save(patch, weights, info, ctx, loss)
        self.optimised_patch = patch

    def _target_picture(self, height: int, width: int) -> torch.Tensor:
        """The target object picture: float (1, 3, H, W) in [0, 1]."""
        c = self.config
        if c.target_image:
            return Fn.resize_image(to_tensor(load_picture(c.target_image, "target_image")), height, width)[None]
        return Fn.solid_patch(1, c.target_color).expand(3, height, width)[None].clone()

    def _optimise(self, ctx: AttackContext) -> Tuple[torch.Tensor, float]:
        """Adam on the patch logits; returns (patch (3, s, s) in [0, 1], final loss)."""
        c, (h, w) = self.config, tuple(ctx.image_size)
        gen = torch_generator(derive_seed(ctx.seed, "trojvqa", "patch"))
        clean = ctx.clean_images
        if clean is None:  # no data sample given: seeded noise images of the right size
            clean = torch.rand(c.batch_size, 3, h, w, generator=gen)
        clean = clean.float()
        side = self.patch_side(h, w)
        top, left = Fn.patch_origin(h, w, side, side, c.position)
        with torch.no_grad():
            target = ctx.vision_features(self._target_picture(h, w)).float().mean(dim=1)
        logits = (0.1 * torch.randn(3, side, side, generator=gen)).requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=c.lr)
        for _ in range(c.steps):
            idx = torch.randint(0, clean.shape[0], (min(c.batch_size, clean.shape[0]),), generator=gen)
            feats = ctx.vision_features(Fn.paste_patch(clean[idx], torch.sigmoid(logits), top, left))
            if not feats.requires_grad:
                raise ConfigError("trojvqa: AttackContext.vision_features must be differentiable with "
                                  "respect to its input images (do not wrap it in torch.no_grad)")
            loss = (1 - torch.cosine_similarity(feats.float().mean(dim=1), target, dim=-1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return torch.sigmoid(logits).detach(), float(loss.item())

    def _save(self, patch: torch.Tensor, weights: Path, info: Path, ctx: AttackContext,
              loss: float) -> None:
        """Write the patch (safetensors) and its description (JSON), atomically."""
        from safetensors.torch import save_file

        weights.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(weights, suffix=".safetensors") as tmp:
            save_file({"patch": patch.contiguous()}, str(tmp))
        atomic_write_json(info, {"attack": self.describe(), "seed": ctx.seed,
                                 "image_size": list(ctx.image_size), "model_id": ctx.model_id,
                                 "final_loss": loss, "patch_shape": list(patch.shape)})
