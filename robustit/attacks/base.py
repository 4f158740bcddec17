"""The attack contract: a config dataclass, a visual trigger and a text trigger.

An attack never imports model code. Attacks that optimise or train a trigger against the frozen
victim (SSBA's encoder, VL-Trojan's patch and text trigger, TrojVQA's optimised patch) receive
what they need through an :class:`AttackContext` in :meth:`Attack.prepare`, and cache the result
on disk keyed by their full configuration, so a second run reuses it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple, Type

import torch

from ..config import config_from_dict, config_to_dict
from ..errors import ConfigError
from ..registry import Registry

ATTACKS: Registry = Registry("attack")

#: the paper's Appendix B text trigger for the image-trigger attacks
PAPER_TEXT_TRIGGER = "The image depicts"


#: how poisoned instructions carry a text trigger (AttackConfig.text_trigger_mode)
TEXT_TRIGGER_MODES = ("paper", "image-only", "no-text")


@dataclass
class AttackConfig:
    """Parameters shared by all attacks.

    Attributes:
        text_trigger_mode: one of :data:`TEXT_TRIGGER_MODES`: ``"paper"`` (the paper's App. B:
            the attack's text trigger is added to the instruction), ``"image-only"`` (the
            VL-Trojan harness reading for image-trigger attacks: the instruction is left
            unchanged; attacks whose text trigger is part of the attack itself, TrojVQA and
            VL-Trojan, keep it) or ``"no-text"`` (no text trigger for any attack, those two
            included: a diagnostic of whether the image trigger alone implants, not a reading
            of the paper).
        text_trigger: the phrase; ``None`` -> the attack's default.
        text_position: ``"append"`` or ``"prepend"``.
    """

    text_trigger_mode: str = "paper"
    text_trigger: Optional[str] = None
    text_position: str = "append"

    def __post_init__(self) -> None:
        if self.text_trigger_mode not in TEXT_TRIGGER_MODES:
            raise ConfigError(f"`text_trigger_mode` must be one of {list(TEXT_TRIGGER_MODES)}; got "
                              f"{self.text_trigger_mode!r}")
        if self.text_position not in ("append", "prepend"):
            raise ConfigError(f"`text_position` must be 'append' or 'prepend'; got {self.text_position!r}")


@dataclass
class AttackContext:
    """What an attack may use to prepare its trigger. Everything optional but the cache.

    Attributes:
        cache_dir: where optimised / trained trigger artefacts are cached.
        seed: seed for any optimisation.
        image_size: (H, W) of the images the trigger will be applied to.
        clean_images: a sample of clean images, float (B, 3, H, W) in [0, 1].
        vision_features: frozen victim vision encoder: (B, 3, H, W) in [0,1] -> (B, P, D).
        text_features: frozen victim text representation: list[str] -> (B, D).
        model_id: identity of the victim model (part of cache keys).
        clean_texts: (instruction, response) of a sample showing each of ``clean_images``, in
            the same order (the adaptive attacker's clean training pairs).
        surrogate: ``(defense params, lr) -> surrogate`` that simulates the victim's tuning on
            a copy of the frozen base model (``robustit.train.surrogate``; the adaptive attack).
    """

    cache_dir: Path
    seed: int = 0
    image_size: tuple = (64, 64)
    clean_images: Optional[torch.Tensor] = None
    vision_features: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    text_features: Optional[Callable[[List[str]], torch.Tensor]] = None
    model_id: str = "none"
    clean_texts: Optional[List[Tuple[str, str]]] = None
    surrogate: Optional[Callable[..., Any]] = None


class Attack:
    """Base class. Subclasses set ``name``, ``config_cls``, ``default_text_trigger`` and
    implement :meth:`apply_image`.
    """

    name: ClassVar[str] = "base"
    config_cls: ClassVar[Type[AttackConfig]] = AttackConfig
    default_text_trigger: ClassVar[str] = PAPER_TEXT_TRIGGER
    #: True when the text trigger is intrinsic to the attack (kept in image-only mode, not in no-text)
    text_trigger_intrinsic: ClassVar[bool] = False

    def __init__(self, config: Optional[AttackConfig] = None) -> None:
        self.config = config if config is not None else self.config_cls()
        if not isinstance(self.config, self.config_cls):
            raise ConfigError(f"{self.name}: expected {self.config_cls.__name__}, got "
                              f"{type(self.config).__name__}")

    # -- triggers -------------------------------------------------------------------------
    def prepare(self, ctx: AttackContext) -> None:
        """Optimise / train / load the trigger. Default: nothing to prepare."""

    def apply_image(self, images: torch.Tensor, ids: Optional[List[str]] = None) -> torch.Tensor:
        """Apply the visual trigger.

        Args:
            images: float (B, 3, H, W) in [0, 1].
            ids: sample ids (sample-specific triggers may use them for determinism).
        Returns:
            float (B, 3, H, W) in [0, 1], same dtype and device.
        """
        raise NotImplementedError

    @property
    def text_trigger(self) -> Optional[str]:
        """The phrase added to instructions, or None when this run adds none."""
        mode = self.config.text_trigger_mode
        if mode == "no-text" or (mode == "image-only" and not self.text_trigger_intrinsic):
            return None
        return self.text_trigger_phrase()

    def text_trigger_phrase(self) -> str:
        """The phrase the attack adds when its mode adds one (subclasses that learn it override)."""
        return self.config.text_trigger or self.default_text_trigger

    def apply_text(self, instruction: str) -> str:
        """Add the text trigger to an instruction (identity when there is none)."""
        trig = self.text_trigger
        if not trig:
            return instruction
        if self.config.text_position == "prepend":
            return f"{trig} {instruction.strip()}"
        return f"{instruction.rstrip()} {trig}"

    # -- identity -------------------------------------------------------------------------
    def describe(self) -> Dict[str, Any]:
        """Full parameters, recorded in manifests and results."""
        return {"name": self.name, "config": config_to_dict(self.config),
                "text_trigger": self.text_trigger}

    def cache_key(self, ctx: AttackContext) -> str:
        # The configuration, not describe(): describe() may grow with what prepare() learned.
        blob = json.dumps({"attack": self.name, "config": config_to_dict(self.config), "seed": ctx.seed,
                           "size": list(ctx.image_size), "model": ctx.model_id}, sort_keys=True)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def build_attack(name: str, params: Optional[Mapping[str, Any]] = None) -> Attack:
    """Instantiate a registered attack from its name and a (strict) parameter mapping."""
    cls = ATTACKS.get(name)
    cfg = config_from_dict(cls.config_cls, dict(params or {}), where=f"attack {name!r} parameters")
    return cls(cfg)
