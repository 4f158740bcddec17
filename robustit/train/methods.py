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

    def screen(self, model, data, progress: bool = False):
        """Before tuning, on the frozen base: decide per sample what to tune on.

        Args:
            model: the base model, not yet tuned (eval-mode passes only; no gradient).
            data: the loop's ``TrainData`` (``dataset``; ``store`` and ``features``: the decoded
                images and the cached vision features, to reuse).
            progress: show progress bars.
        Returns:
            None (tune on the data as it is: the default), or ``(dataset, record)``: the data to
            tune on, and a JSON-ready record written to ``RUN/screen.json`` (its ``summary`` is
            also recorded under ``screen`` in train.json). Never sees a manifest or a trigger.
        """
        return None

    def extra_modules(self) -> Dict[str, torch.nn.Module]:
        """Modules the method itself trains (optimised and saved with the resume state, never
        part of the model's checkpoint)."""
        return {}

    def describe(self) -> Dict:
        return {"name": self.name, "params": self.params}

    def finish(self, model, data, optimizer, cfg) -> Dict:
        """Called once after the last training step, before the final checkpoint is written
        (e.g. Fine-Pruning measures activations, sets a mask and re-tunes here).

        Args:
            model: the tuned model (in training mode).
            data: the loop's ``TrainData`` (``dataset``, ``store``, ``batch(step)``, ``total_steps()``,
                ``runtime``: further optimizer steps go through ``data.runtime.step`` so that
                they are all-reduced under a launcher).
            optimizer: the run's optimizer (its state continues if the method trains further).
            cfg: the run's ``TrainConfig``.

        Returns:
            a JSON-ready dict recorded under ``"finish"`` in train.json and the checkpoint's
            tuned.json; ``{}`` (the default) records nothing.
        """
        return {}

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
    """From-scratch pretraining of the whole embedded model (all parameters trainable).

    Parameters:
        scene_loss_weight: weight of the auxiliary scene-attribute loss on the pooled adapter
            output (see ``scene_supervision``); 0 switches it off. Samples without
            ``meta["scene"]`` (data other than the embedded world) contribute no such loss.
            Default 0.05 (the shipped base model); 0 switches it off.
        scene_pool: ``mean`` (default, the shipped base model) or ``latents``: how the head
            reads the adapter output (``scene_supervision.SceneHead``).
    """

    name = "pretrain"
    full_model = True

    def __init__(self, params: Dict | None = None) -> None:
        from ..config import check_range
        from ..errors import ConfigError
        from .scene_supervision import POOLINGS

        self.params = dict(params or {})
        unknown = set(self.params) - {"scene_loss_weight", "scene_pool"}
        if unknown:
            raise ConfigError(f"unknown pretrain parameter(s) {sorted(unknown)}; valid: "
                              f"scene_loss_weight, scene_pool")
        self.scene_weight = float(self.params.get("scene_loss_weight", 0.05))
        check_range("scene_loss_weight", self.scene_weight, 0)
        self.scene_pool = self.params.get("scene_pool", "mean")
        if self.scene_pool not in POOLINGS:
            raise ConfigError(f"pretrain parameter scene_pool must be one of {list(POOLINGS)}; "
                              f"got {self.scene_pool!r}")
        self.head = None

    def setup(self, model) -> None:
        if self.scene_weight > 0:
            from .scene_supervision import SceneHead

            latents = getattr(getattr(model, "config", None), "num_latents", None)
            self.head = SceneHead(model.hook_point_width(model.spec.default_hook_point),
                                  self.scene_pool, latents).to(model.device)

    def extra_modules(self) -> Dict[str, torch.nn.Module]:
        return {"scene_head": self.head} if self.head is not None else {}

    def loss(self, model, batch: Batch, generator: torch.Generator):
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    images=batch.images, vision_features=batch.vision_features, labels=batch.labels)
        logs = {"lm_loss": out.loss.item()}
        aux = self.head.loss(out.adapter_out, [s.meta for s in batch.samples]) if self.head else None
        if aux is None:
            return out.loss, logs
        logs["scene_loss"] = aux.item()
        return out.loss + self.scene_weight * aux, logs
