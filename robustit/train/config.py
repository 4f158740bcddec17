"""Training configuration and presets.

Presets:

* ``paper``: the paper's setting for real backbones (AdamW, weight decay 0.01, cosine, 1 %
  warm-up, lr 1e-5, batch 16, 3 epochs).
* ``embedded-cpu``: chosen by measurement for the embedded model on a CPU (see
  ``docs/training.md`` for the sweep that picked it): a ~10M-parameter model with a frozen core
  needs a far larger learning rate than a 1B-parameter one to learn in minutes.
* ``pretrain``: the embedded model's from-scratch pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict

from ..config import check_range
from ..errors import ConfigError


MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything that defines a tuning run (saved with its checkpoint).

    Attributes:
        method: tuning method (``vanilla``, ``robustit``, ``pretrain``, ...).
        preset: the preset these defaults came from (recorded, informative).
        lr, batch_size, epochs, weight_decay, warmup_ratio, grad_clip: optimisation;
            ``batch_size`` is per process (one rank's micro-batch).
        max_steps: stop after this many optimizer steps (0 = run all epochs).
        seed: seeds model-independent randomness: data order, augmentations, dropout.
        max_len: token budget per sample (prompt + response).
        cache_vision: cache frozen vision features when the input is not augmented.
        save_every: write a resumable checkpoint every this many steps (0 = only at the end).
        log_every: log loss every this many steps.
        threads: torch threads (0 = leave as is).
        grad_accum: micro-batches of ``batch_size`` per rank whose gradients make one optimizer
            step; the global batch is batch_size x ranks x grad_accum (docs/training.md).
        mixed_precision: ``no`` (float32), ``bf16`` or ``fp16`` autocast through accelerate;
            fp16 (with a gradient scaler) needs a GPU.
        method_params: the method's own options (e.g. RobustIT's alpha, beta, gamma).
    """

    method: str = "vanilla"
    preset: str = "embedded-cpu"
    lr: float = 1e-3
    batch_size: int = 16
    epochs: float = 3.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.01
    grad_clip: float = 1.0
    max_steps: int = 0
    seed: int = 0
    max_len: int = 96
    cache_vision: bool = True
    save_every: int = 200
    log_every: int = 10
    threads: int = 0
    grad_accum: int = 1
    mixed_precision: str = "no"
    method_params: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_range("lr", self.lr, 0, None, lo_open=True)
        check_range("batch_size", self.batch_size, 1)
        check_range("epochs", self.epochs, 0, None, lo_open=True)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("warmup_ratio", self.warmup_ratio, 0, 1)
        check_range("max_len", self.max_len, 8)
        check_range("grad_accum", self.grad_accum, 1)
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"`mixed_precision` must be one of {list(MIXED_PRECISION)}; "
                              f"got {self.mixed_precision!r}")
        if self.preset not in PRESETS:
            raise ConfigError(f"`preset` must be one of {sorted(PRESETS)}; got {self.preset!r}")


PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": dict(lr=1e-5, batch_size=16, epochs=3.0),
    "embedded-cpu": dict(lr=1e-3, batch_size=16, epochs=3.0),
    "pretrain": dict(lr=1e-3, batch_size=32, epochs=1.0, warmup_ratio=0.02, method="pretrain"),
}


def preset_config(preset: str, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a preset, with explicit overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
    values = {**PRESETS[preset], "preset": preset}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(TrainConfig(preset=preset), **values)
