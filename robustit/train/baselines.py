"""Baseline defenses of the RobustIT paper (Appendix F, Table 11) as tuning methods.

* ``fineprune``: tune like VanillaIT, then (``finish``) measure each channel's mean |activation|
  at a hook point on a seeded slice of the training data, mask the least active channels up to
  a percentile (a fixed :class:`ChannelMask`, saved in the checkpoint, applied at inference) and
  optionally re-tune with the mask fixed. See :mod:`robustit.defenses.fineprune`.
* ``cleanclip``: every sample is seen as several augmented variants of instruction and image,
  under the ordinary LM loss. See :mod:`robustit.defenses.cleanclip`.

The inference-time baselines (prompt filtering, magnitude pruning) are options of evaluation,
not methods: :mod:`robustit.defenses.prompt_filter`, :mod:`robustit.defenses.magnitude_prune`.
"""

from __future__ import annotations

from typing import Dict, List

import torch

from ..config import config_from_dict, config_to_dict
from ..defenses.cleanclip import CleanCLIPAugment, CleanCLIPConfig
from ..defenses.fineprune import (FinePruneConfig, channel_activity, install_prune_mask,
                                  measurement_slice, prune_count)
from .batching import Batch, encode_pairs
from .methods import METHODS, Method


@METHODS.register("fineprune")
class FinePrune(Method):
    """Fine-Pruning adapted to instruction tuning (params: see ``FinePruneConfig``)."""

    name = "fineprune"

    def __init__(self, params: Dict | None = None) -> None:
        self.params = dict(params or {})
        self.cfg = config_from_dict(FinePruneConfig, self.params, "fineprune parameters")

    def describe(self) -> Dict:
        return {"name": self.name, "params": self.params, "fineprune": config_to_dict(self.cfg)}

    def finish(self, model, data, optimizer, cfg) -> Dict:
        hook_point = self.cfg.hook_point or model.spec.default_hook_point
        rows = measurement_slice(len(data.dataset), self.cfg.slice_share, cfg.seed)
        activity = channel_activity(model, hook_point, self._image_batches(data, rows, cfg.batch_size))
        mask = install_prune_mask(model, hook_point, activity, self.cfg.percentile)
        record = {"hook_point": hook_point, "width": mask.width,
                  "pruned": prune_count(self.cfg.percentile, mask.width),
                  "pruned_channels": torch.nonzero(mask.mask == 0).reshape(-1).tolist(),
                  "slice": {"n": len(rows), "ids": [data.dataset.samples[i].id for i in rows]},
                  "activity": [round(float(a), 6) for a in activity]}
        record["retune_losses"] = self._retune(model, data, optimizer, cfg)
        return {"fineprune": record}

    @staticmethod
    def _image_batches(data, rows: List[int], batch_size: int):
        """The slice's images, (B, T, 3, H, W) in [0, 1] per batch, decoded lazily."""
        for start in range(0, len(rows), batch_size):
            samples = [data.dataset.samples[i] for i in rows[start:start + batch_size]]
            yield data.store.batch([s.image_ids for s in samples])

    def _retune(self, model, data, optimizer, cfg) -> List[float]:
        """``retune_steps`` optimizer steps at a constant lr with the mask fixed; their losses.

        Batches continue the run's data order (steps total, total + 1, ...); the mask does not
        track (``tracking=False``), so it stays as measured. The steps go through the loop's
        runtime (``data.runtime``), so under a launcher gradients are all-reduced as in training.
        """
        from .runtime import Runtime

        lr = self.cfg.retune_lr or cfg.lr
        params = [p for group in optimizer.param_groups for p in group["params"]]
        runtime = data.runtime or Runtime(model, self, optimizer, dict(enumerate(params)), cfg)
        losses, start = [], data.total_steps()
        model.train()
        for step in range(start, start + self.cfg.retune_steps):
            results = runtime.step(data, step, lr, label="retune", clip_params=params)
            losses.append(round(runtime.mean_logs(results)["loss"], 6))
        return losses


@METHODS.register("cleanclip")
class CleanCLIP(Method):
    """CleanCLIP adapted to instruction tuning (params: see ``CleanCLIPConfig``)."""

    name = "cleanclip"

    def __init__(self, params: Dict | None = None) -> None:
        self.params = dict(params or {})
        self.cfg = config_from_dict(CleanCLIPConfig, self.params, "cleanclip parameters")
        self.augment = CleanCLIPAugment(self.cfg)

    @property
    def augments_images(self) -> bool:  # type: ignore[override]
        return self.cfg.visual

    def describe(self) -> Dict:
        out = {"name": self.name, "params": self.params, "cleanclip": config_to_dict(self.cfg)}
        if self.augment.text is not None:
            out["synonym_source"] = self.augment.text.synonyms.source_name
        return out

    def loss(self, model, batch: Batch, generator: torch.Generator):
        """LM loss over the B * R rows (R = variants + include_clean), one forward."""
        aug = self.augment
        instructions = aug.instructions(batch.instructions, generator)
        responses = [r for r in batch.responses for _ in range(aug.rows_per_sample)]
        if self.cfg.visual:
            images, features = aug.images(batch.images, generator), None
        else:  # images unchanged: reuse cached features when the loop has them
            images, features = aug.repeat(batch.images), aug.repeat(batch.vision_features)
        enc = encode_pairs(model.tokenizer, model.template, instructions, responses, batch.max_len)
        enc = {k: v.to(batch.input_ids.device) for k, v in enc.items()}
        out = model(**enc, images=images, vision_features=features)
        return out.loss, {"lm_loss": out.loss.item(), "rows": float(len(instructions))}
