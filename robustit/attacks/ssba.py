"""SSBA: sample-specific invisible backdoor (Li et al., ICCV 2021; BackdoorBox ISSBA).

Every poisoned image carries the same secret bit string, hidden by a StegaStamp-style encoder
(:mod:`robustit.attacks.stegastamp`) as an image-dependent, near-invisible residual. The
originals ship precomputed poisoned images; robustit trains its own small encoder/decoder on
the clean images of the run (CPU minutes at 64x64) and caches it in
``ctx.cache_dir/<cache key>/`` (``stegastamp.safetensors`` + ``stegastamp.json``), keyed by the
configuration, the seed and the image size; a second :meth:`SSBA.prepare` loads it. The
encoder is fully convolutional, so the trigger applies at any image size (it is trained at the
data's size).

Text trigger: the base default (the paper's "The image depicts" appended in ``paper`` mode,
none in ``image-only`` mode).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from ..config import check_range, config_to_dict
from ..errors import ConfigError
from ..seeding import derive_seed, torch_generator
from .base import ATTACKS, Attack, AttackConfig, AttackContext
from .stegastamp import (META_FILE, StegaStampConfig, encode, evaluate_stegastamp, load_stegastamp,
                         random_secrets, save_stegastamp, train_stegastamp)
from .trigger_optim import tensor_fingerprint


@dataclass
class SSBAConfig(AttackConfig):
    """SSBA parameters (image-size agnostic).

    Attributes:
        secret_bits: length of the hidden secret (20 as BackdoorBox's ISSBA; BackdoorBench: 100).
        secret_seed: the fixed secret is drawn from this seed.
        train_steps, batch_size, lr, channels, image_weight, edge_weight, specific_weight,
            residual_scale: the StegaStamp budget and losses (:class:`StegaStampConfig`).
        max_train_images: at most this many clean images are used (a seeded subset).
        eval_fraction: share of them held out to measure PSNR / bit accuracy (at most 256).
        cache_name: a fixed cache folder name under ``cache_dir`` (reused across data sets);
            ``None`` -> the configuration/seed/data hash.
    """

    # the StegaStamp budget and losses: StegaStampConfig's defaults, one source of truth
    secret_bits: int = StegaStampConfig.secret_bits
    secret_seed: int = 0
    train_steps: int = StegaStampConfig.train_steps
    batch_size: int = StegaStampConfig.batch_size
    lr: float = StegaStampConfig.lr
    channels: int = StegaStampConfig.channels
    image_weight: float = StegaStampConfig.image_weight
    edge_weight: float = StegaStampConfig.edge_weight
    specific_weight: float = StegaStampConfig.specific_weight
    residual_scale: float = StegaStampConfig.residual_scale
    max_train_images: int = 2000
    eval_fraction: float = 0.1
    cache_name: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("max_train_images", self.max_train_images, lo=2)
        check_range("eval_fraction", self.eval_fraction, lo=0, hi=0.5)
        if self.cache_name is not None and (not self.cache_name or "/" in self.cache_name
                                            or self.cache_name.startswith(".")):
            raise ConfigError(f"`cache_name` must be a plain folder name; got {self.cache_name!r}")
        self.stegastamp_config()  # validates the training fields

    def stegastamp_config(self) -> StegaStampConfig:
        """The encoder/decoder configuration these parameters describe."""
        return StegaStampConfig(
            secret_bits=self.secret_bits, channels=self.channels, residual_scale=self.residual_scale,
            train_steps=self.train_steps, batch_size=self.batch_size, lr=self.lr,
            image_weight=self.image_weight, edge_weight=self.edge_weight,
            specific_weight=self.specific_weight)


@ATTACKS.register("ssba")
class SSBA(Attack):
    """Sample-specific invisible trigger: a fixed secret hidden by a trained StegaStamp encoder.

    Call :meth:`prepare` (train or load the encoder) before :meth:`apply_image`.
    Set ``attack.progress = False`` to hide the training progress bar.
    """

    name = "ssba"
    config_cls = SSBAConfig
    progress: bool = True

    def __init__(self, config: Optional[SSBAConfig] = None) -> None:
        super().__init__(config)
        self.encoder = self.decoder = None
        self.stats: Dict[str, Any] = {}

    @property
    def secret(self) -> Tensor:
        """The fixed secret, float (L,) of 0/1, drawn from ``secret_seed``."""
        g = torch_generator(derive_seed(self.config.secret_seed, "ssba-secret"))
        return random_secrets(1, self.config.secret_bits, g)[0]

    # -- preparation ------------------------------------------------------------------------
    def cache_key(self, ctx: AttackContext) -> str:
        """``cache_name``, or a hash of the configuration, seed and image size.

        Not of the victim model (the encoder does not depend on it, so ``robustit poison
        --model`` and an evaluation without the victim share it), nor of the images (poisoning
        and evaluation must use the very same encoder; a fingerprint of the training images is
        recorded in the cache's JSON instead).
        """
        if self.config.cache_name:
            return self.config.cache_name
        blob = json.dumps({"config": config_to_dict(self.config), "seed": ctx.seed,
                           "size": list(ctx.image_size)}, sort_keys=True)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def prepare(self, ctx: AttackContext) -> None:
        """Load the cached encoder, or train it on ``ctx.clean_images`` and cache it.

        Raises:
            ConfigError: no cache and no clean images, or a ``cache_name`` folder holding an
                encoder of another configuration.
        """
        folder = Path(ctx.cache_dir) / self.cache_key(ctx)
        if (folder / META_FILE).exists():
            self._load(folder)
            return
        if ctx.clean_images is None:
            raise ConfigError("ssba needs clean images to train its StegaStamp encoder: pass "
                              "`clean_images` in the AttackContext (run `robustit poison` with "
                              "the training data), or point `cache_name` at a trained encoder")
        train, held = self._split(ctx.clean_images, derive_seed(ctx.seed, "ssba-split"))
        enc, dec, train_stats = train_stegastamp(
            train, self.config.stegastamp_config(), torch_generator(derive_seed(ctx.seed, "ssba")),
            progress=self.progress)
        stats = {**evaluate_stegastamp(enc, dec, held, self.secret), "eval_images": len(held),
                 "train": train_stats, "data_fingerprint": tensor_fingerprint(ctx.clean_images)}
        save_stegastamp(folder, enc, dec, self.config.stegastamp_config(),
                        {"stats": stats, "secret": self._secret_str()})
        self._load(folder)  # use exactly what a later run will load

    def _split(self, images: Tensor, seed: int):
        """Seeded (train (N_t,3,H,W), held-out (N_e,3,H,W)) split of the clean images."""
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"`clean_images` must be a float tensor (N, 3, H, W) in [0, 1]; got "
                              f"{getattr(images, 'shape', type(images).__name__)}")
        if len(images) < 4:
            raise ConfigError(f"ssba needs at least 4 clean images to train; got {len(images)}")
        order = torch.randperm(len(images), generator=torch_generator(seed))
        n_eval = min(256, max(1, int(self.config.eval_fraction * len(images))))
        n_train = min(self.config.max_train_images, len(images) - n_eval)
        images = images.detach().float().cpu()
        return images[order[n_eval:n_eval + n_train]], images[order[:n_eval]]

    def _load(self, folder: Path) -> None:
        enc, dec, cfg, meta = load_stegastamp(folder)
        if cfg != self.config.stegastamp_config() or meta.get("secret") != self._secret_str():
            raise ConfigError(f"ssba cache {folder} holds an encoder of another configuration or "
                              f"secret; delete it or choose another `cache_name`")
        self.encoder, self.decoder, self.stats = enc, dec, meta.get("stats", {})

    def _secret_str(self) -> str:
        return "".join(str(int(b)) for b in self.secret.tolist())

    # -- triggers ---------------------------------------------------------------------------
    @torch.no_grad()
    def apply_image(self, images: Tensor, ids: Optional[List[str]] = None) -> Tensor:
        """Hide the fixed secret in each image: (B,3,H,W) in [0,1] -> (B,3,H,W) in [0,1].

        Deterministic (eval mode, no randomness); the residual depends on the image; ``ids``
        are not needed.
        """
        if self.encoder is None:
            raise ConfigError("ssba: apply_image() was called before prepare(); call "
                              "attack.prepare(AttackContext(cache_dir=..., clean_images=...)) first")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"ssba: `images` must be (B, 3, H, W); got {tuple(images.shape)}")
        out = []
        for chunk in images.detach().float().cpu().split(64):
            out.append(encode(self.encoder, chunk, self.secret.expand(len(chunk), -1)))
        return torch.cat(out).to(device=images.device, dtype=images.dtype)

    def describe(self) -> Dict[str, Any]:
        """Parameters plus, once prepared, the secret and PSNR / bit accuracy statistics."""
        d = super().describe()
        if self.encoder is not None:
            d["secret"] = self._secret_str()
            d["stats"] = {k: v for k, v in self.stats.items() if k != "train"}
        return d
