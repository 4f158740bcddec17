"""Tuning methods: what is trainable, what the loss is, what hooks run.

A method is attack-agnostic by construction: it sees batches (images, instructions, responses)
and the model, never a manifest or a trigger.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from ..registry import Registry
from .batching import Batch

METHODS: Registry = Registry("method")


class Method:
    """Base: VanillaIT. Subclasses override what differs.

    Attributes:
        name: registry name.
        full_model: train every parameter (pretraining) instead of adapter + embeddings.
        augments_images: the loss needs raw images every step (no feature cache for that view).
    """

    name = "vanilla"
    full_model = False
    augments_images = False

    def __init__(self, params: Dict | None = None) -> None:
        self.params = dict(params or {})
        if self.params:
            from ..errors import ConfigError

            raise ConfigError(f"method {self.name!r} takes no parameters; got {sorted(self.params)}")

    def setup(self, model) -> None:
        """Install buffers / masks on the model before the optimizer is built."""

    def describe(self) -> Dict:
        return {"name": self.name, "params": self.params}

    def loss(self, model, batch: Batch, generator: torch.Generator) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Scalar loss and a dict of floats to log."""
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    images=batch.images, vision_features=batch.vision_features, labels=batch.labels)
        return out.loss, {"lm_loss": out.loss.item()}


@METHODS.register("vanilla")
class VanillaIT(Method):
    """Standard instruction tuning of adapter + embeddings, no defense."""


@METHODS.register("pretrain")
class Pretrain(Method):
    """From-scratch pretraining of the whole embedded model (all parameters trainable)."""

    name = "pretrain"
    full_model = True
