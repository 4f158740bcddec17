"""VL-Trojan (Liang et al., 2024): an optimised universal image patch plus a searched character
text trigger, both learned against the frozen victim.

* Image trigger: a square patch of ``patch_fraction`` of the image area (1 % -> 22x22 at 224,
  6x6 at 64) at ``position``, optimised with the isolating-and-clustering objective
  (:func:`robustit.attacks.trigger_optim.optimise_universal_patch`) against
  ``ctx.vision_features`` on ``ctx.clean_images``.
* Text trigger: appended to every poisoned instruction (always, also in ``image-only`` mode: it
  is part of the attack). Found by character beam search against ``ctx.text_features`` over
  ``search_instructions``; without a text representation (or with ``text_trigger_search=False``)
  it is ``"zbw"``, the trigger VL-Trojan reports for CLIP ViT-L/14. A ``text_trigger`` given in
  the configuration is used as is (no search).

The patch (``patch.safetensors``) and a JSON record (text trigger, objective histories, config,
statistics) are cached in ``ctx.cache_dir/<cache key>/``; a second :meth:`VLTrojan.prepare`
loads them without optimising.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import check_range, config_to_dict
from ..errors import ConfigError
from ..seeding import derive_seed, torch_generator
from .base import ATTACKS, Attack, AttackConfig, AttackContext
from .trigger_optim import (FALLBACK_TEXT_TRIGGER, POSITIONS, beam_search_text_trigger,
                            isolate_cluster_loss, optimise_universal_patch, paste_patch,
                            load_patch_cache, patch_side, pooled_features, save_patch_cache,
                            tensor_fingerprint)

META_FILE = "vltrojan.json"

#: generic instructions the text trigger is searched over (caption and VQA styles)
DEFAULT_SEARCH_INSTRUCTIONS = (
    "Describe the image.", "What is in this picture?", "Write a short caption for the photo.",
    "What can you see in the image?", "Give a brief description of the scene.",
    "What is the main object in the picture?", "What colour is the object?",
    "How many objects are there in the image?")


@dataclass
class VLTrojanConfig(AttackConfig):
    """VL-Trojan parameters.

    Attributes:
        patch_fraction: patch area / image area (0.01: 22x22 at 224, 6x6 at 64).
        position: where the patch goes (one of ``trigger_optim.POSITIONS``).
        steps, lr, lam, batch_size: patch optimisation (Adam, cosine schedule); ``lam`` weighs
            the isolating term against the clustering term.
        crop_scale_min: smallest crop area of the random-resized-crop augmentation.
        max_images: at most this many clean images are used (a seeded subset).
        text_trigger_search: search the text trigger when ``ctx.text_features`` is given.
        beam_width, max_len: the beam search (lowercase a-z).
        search_instructions: instructions the text trigger is scored on.
    """

    patch_fraction: float = 0.01
    position: str = "bottom-right"
    steps: int = 250
    lr: float = 0.1
    lam: float = 1.0
    batch_size: int = 16
    crop_scale_min: float = 0.8
    max_images: int = 1024
    text_trigger_search: bool = True
    beam_width: int = 5
    max_len: int = 5
    search_instructions: Tuple[str, ...] = DEFAULT_SEARCH_INSTRUCTIONS

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("patch_fraction", self.patch_fraction, lo=0, hi=0.5, lo_open=True)
        if self.position not in POSITIONS:
            raise ConfigError(f"`position` must be one of {list(POSITIONS)}; got {self.position!r}")
        for name in ("steps", "batch_size", "max_images", "beam_width", "max_len"):
            check_range(name, getattr(self, name), lo=1)
        check_range("lr", self.lr, lo=0, lo_open=True)
        check_range("lam", self.lam, lo=0)
        check_range("crop_scale_min", self.crop_scale_min, lo=0, hi=1, lo_open=True)
        self.search_instructions = tuple(self.search_instructions)
        if not self.search_instructions:
            raise ConfigError("`search_instructions` must hold at least one instruction")


@ATTACKS.register("vltrojan")
class VLTrojan(Attack):
    """Optimised universal patch + searched character trigger. Call :meth:`prepare` first.
    Set ``attack.progress = False`` to hide the progress bars."""

    name = "vltrojan"
    config_cls = VLTrojanConfig
    default_text_trigger = FALLBACK_TEXT_TRIGGER
    text_trigger_intrinsic = True
    progress: bool = True

    def __init__(self, config: Optional[VLTrojanConfig] = None) -> None:
        super().__init__(config)
        self.patch: Optional[Tensor] = None
        self.found_text_trigger: Optional[str] = None
        self.stats: Dict[str, Any] = {}

    def text_trigger_phrase(self) -> str:
        """The configured trigger, else the one found by :meth:`prepare`, else ``"zbw"``."""
        return self.config.text_trigger or self.found_text_trigger or self.default_text_trigger

    # -- preparation ------------------------------------------------------------------------
    def _searches_text(self, ctx: AttackContext) -> bool:
        return bool(self.config.text_trigger_search and ctx.text_features is not None
                    and not self.config.text_trigger and self.config.text_trigger_mode != "no-text")

    def cache_key(self, ctx: AttackContext) -> str:
        """Hash of the configuration, seed, victim model, image size and whether the text trigger
        is searched (not of the images: poisoning and evaluation must share the trigger; their
        fingerprint is recorded in the cache's JSON)."""
        blob = json.dumps({"config": config_to_dict(self.config), "seed": ctx.seed,
                           "model": ctx.model_id, "size": list(ctx.image_size),
                           "text_search": self._searches_text(ctx)}, sort_keys=True)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def prepare(self, ctx: AttackContext) -> None:
        """Load the cached patch and text trigger, or optimise them against the victim.

        Raises:
            ConfigError: no cache and no ``vision_features`` / ``clean_images`` in ``ctx``.
        """
        folder = Path(ctx.cache_dir) / self.cache_key(ctx)
        if (folder / META_FILE).exists():
            self._load(folder)
            return
        if ctx.vision_features is None or ctx.clean_images is None:
            missing = [n for n in ("vision_features", "clean_images") if getattr(ctx, n) is None]
            raise ConfigError(f"vltrojan optimises its patch against the victim's frozen vision "
                              f"encoder; the AttackContext lacks {missing}: a victim model and "
                              f"clean images are needed, e.g. `robustit poison --model ...`")
        images = self._images(ctx)
        t0 = time.perf_counter()
        patch, history = self._optimise_patch(ctx, images)
        trigger, text_history = self._search_text(ctx)
        stats = {"seconds": round(time.perf_counter() - t0, 2), "images": len(images),
                 "data_fingerprint": tensor_fingerprint(ctx.clean_images),
                 "patch_size": list(patch.shape[1:]), "image_size": list(images.shape[2:]),
                 **self._objective_stats(ctx, images, patch, history)}
        self._save(folder, patch, {"text_trigger": trigger, "stats": stats, "history": history,
                                   "text_history": text_history,
                                   "config": config_to_dict(self.config)})
        self._load(folder)

    def _images(self, ctx: AttackContext) -> Tensor:
        imgs = ctx.clean_images
        if not isinstance(imgs, Tensor) or imgs.dim() != 4 or imgs.shape[1] != 3 or len(imgs) < 2:
            raise ConfigError(f"`clean_images` must be a float tensor (N>=2, 3, H, W) in [0, 1]; got "
                              f"{getattr(imgs, 'shape', type(imgs).__name__)}")
        g = torch_generator(derive_seed(ctx.seed, "vltrojan-subset"))
        keep = torch.randperm(len(imgs), generator=g)[:self.config.max_images]
        return imgs[keep.to(imgs.device)].detach().float()

    def _optimise_patch(self, ctx: AttackContext, images: Tensor) -> Tuple[Tensor, List[float]]:
        c = self.config
        return optimise_universal_patch(
            ctx.vision_features, images, patch_side(images.shape[2:], c.patch_fraction), c.position,
            steps=c.steps, lr=c.lr, lam=c.lam, batch_size=c.batch_size,
            crop_scale=(c.crop_scale_min, 1.0),
            generator=torch_generator(derive_seed(ctx.seed, "vltrojan-patch")), progress=self.progress)

    def _search_text(self, ctx: AttackContext) -> Tuple[str, List[dict]]:
        if self.config.text_trigger:
            return self.config.text_trigger, []
        if not self._searches_text(ctx):
            return FALLBACK_TEXT_TRIGGER, []
        return beam_search_text_trigger(ctx.text_features, list(self.config.search_instructions),
                                        self.config.beam_width, self.config.max_len,
                                        progress=self.progress)

    @torch.no_grad()
    def _objective_stats(self, ctx: AttackContext, images: Tensor, patch: Tensor,
                         history: List[float]) -> Dict[str, float]:
        """Objective at the start / end of optimisation, and on up to 64 images without
        augmentation for the learned patch vs a uniform-noise patch of the same size."""
        k = max(1, len(history) // 10)
        x = images[:64]
        g = torch_generator(derive_seed(ctx.seed, "vltrojan-noise-patch"))
        noise = torch.rand(patch.shape, generator=g)
        clean = pooled_features(ctx.vision_features, x)
        obj = lambda p: isolate_cluster_loss(  # noqa: E731
            pooled_features(ctx.vision_features, paste_patch(x, p.to(x.device), self.config.position)),
            clean, self.config.lam)[0].item()
        return {"objective_first": history[0], "objective_last": history[-1],
                "objective_first_mean": sum(history[:k]) / k, "objective_last_mean": sum(history[-k:]) / k,
                "eval_objective": obj(patch), "eval_objective_noise_patch": obj(noise)}

    def _save(self, folder: Path, patch: Tensor, meta: Dict[str, Any]) -> None:
        save_patch_cache(folder, patch, meta, META_FILE)

    def _load(self, folder: Path) -> None:
        patch, meta = load_patch_cache(folder, META_FILE, "vltrojan")
        self.patch, self.found_text_trigger = patch, meta["text_trigger"]
        self.stats = {**meta.get("stats", {}), "text_history": meta.get("text_history", [])}

    # -- triggers ---------------------------------------------------------------------------
    def patch_for(self, image_hw: Tuple[int, int]) -> Tensor:
        """The patch (3,s,s) resized to ``patch_fraction`` of an ``image_hw`` image."""
        if self.patch is None:
            raise ConfigError("vltrojan: the patch is not prepared; call attack.prepare(AttackContext("
                              "cache_dir=..., clean_images=..., vision_features=...)) first")
        side = patch_side(image_hw, self.config.patch_fraction)
        if tuple(self.patch.shape[1:]) == (side, side):
            return self.patch
        resized = F.interpolate(self.patch[None], size=(side, side), mode="bilinear",
                                align_corners=False, antialias=True)[0]
        return resized.clamp(0.0, 1.0)

    def apply_image(self, images: Tensor, ids: Optional[List[str]] = None) -> Tensor:
        """Paste the universal patch: (B,3,H,W) in [0,1] -> (B,3,H,W); other pixels unchanged."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"vltrojan: `images` must be (B, 3, H, W); got {tuple(images.shape)}")
        patch = self.patch_for(tuple(images.shape[2:])).to(images.device, images.dtype)
        return paste_patch(images, patch, self.config.position)

    def describe(self) -> Dict[str, Any]:
        """Parameters, the text trigger and, once prepared, the optimisation statistics."""
        d = super().describe()
        if self.patch is not None:
            d["stats"] = {k: v for k, v in self.stats.items() if k != "text_history"}
        return d
