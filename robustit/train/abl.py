"""ABL (Anti-Backdoor Learning, NeurIPS 2021) as a baseline, adapted to adapter + embedding tuning.

ABL's observation: poisoned samples are learned faster than clean ones, so they end with the
lowest loss; it isolates the lowest-loss share and then unlearns them by gradient ascent.

What runs (readings of ours, each a parameter; docs/audit.md):
1. VanillaIT for the whole run (ABL's isolation phase uses a local gradient ascent loss during
   early training; here the run is plain, and the isolation reads the tuned model).
2. After the last step (``finish``), the mean token NLL of every training response under the
   tuned model (the screen's own-image pass); the ``isolation_share`` lowest are isolated, by
   robust z within each task (``isolate_by=task``, default: short VQA answers always have the
   lowest raw loss, and isolating them unlearned 100 clean answers and no poison on the shipped
   base, 2026-12-08) or by the raw NLL (``isolate_by=raw``, ABL's literal rule).
3. ``unlearn_steps`` optimizer steps of gradient ascent (the LM loss negated) on the isolated
   samples at ``unlearn_lr`` (default: a tenth of the run's lr), through the loop's runtime.
   The ascent is bounded: a batch whose loss is above ``unlearn_ceiling`` times the median NLL
   of the samples kept gives no gradient (ABL unlearns a classifier's bounded cross-entropy; a
   language model's loss has no bound, and unbounded ascent wipes out the model: 20 steps at
   the run's lr left a clean-tuned model at CIDEr 0 on the shipped base, 2026-12-08).
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from ..config import check_range
from ..defenses.screening.config import ScreenConfig
from ..defenses.screening.likelihood import VisionInputs, score_tokens
from ..defenses.screening.signals import likelihood, robust_z
from ..errors import ConfigError
from .batching import Batch
from .methods import METHODS, Method

DEFAULTS = {"isolation_share": 0.05, "unlearn_steps": 20, "unlearn_lr": None, "unlearn_ceiling": 3.0,
            "isolate_by": "task"}


@METHODS.register("abl")
class ABL(Method):
    """VanillaIT, then isolate the lowest-loss samples and unlearn them by gradient ascent."""

    name = "abl"

    def __init__(self, params: Dict | None = None) -> None:
        self.params = dict(params or {})
        unknown = sorted(set(self.params) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown abl parameter(s) {unknown}; valid: {sorted(DEFAULTS)}")
        self.cfg = {**DEFAULTS, **self.params}
        check_range("isolation_share", self.cfg["isolation_share"], 0, 1, lo_open=True)
        check_range("unlearn_steps", self.cfg["unlearn_steps"], 0)
        if self.cfg["unlearn_lr"] is not None:
            check_range("unlearn_lr", self.cfg["unlearn_lr"], 0, lo_open=True)
        check_range("unlearn_ceiling", self.cfg["unlearn_ceiling"], 0, lo_open=True)
        if self.cfg["isolate_by"] not in ("task", "raw"):
            raise ConfigError(f"abl parameter isolate_by must be task or raw; got {self.cfg['isolate_by']!r}")
        self.ascent, self.ceiling = False, float("inf")

    def describe(self) -> Dict:
        return {"name": self.name, "params": self.params, "abl": dict(self.cfg)}

    def loss(self, model, batch: Batch, generator: torch.Generator):
        loss, logs = super().loss(model, batch, generator)
        if not self.ascent:
            return loss, logs
        if loss.item() > self.ceiling:  # flooded: no further ascent on this batch
            return loss * 0.0 - loss.detach(), {**logs, "ascent": 0.0}
        return -loss, {**logs, "ascent": 1.0}

    def finish(self, model, data, optimizer, cfg) -> Dict:
        dataset = data.dataset
        vision = VisionInputs(model, dataset, features=data.features, store=data.store)
        scores = score_tokens(model, dataset, ScreenConfig(max_len=cfg.max_len, signals=("likelihood",)), vision,
                              grounding=False, progress=False)
        nll = likelihood(scores)
        rank = robust_z(nll, [s.task for s in dataset.samples]) if self.cfg["isolate_by"] == "task" else nll
        k = max(1, int(round(self.cfg["isolation_share"] * len(dataset))))
        isolated = np.argsort(rank, kind="stable")[:k]
        kept = np.setdiff1d(np.arange(len(dataset)), isolated)
        self.ceiling = self.cfg["unlearn_ceiling"] * float(np.median(nll[kept])) if kept.size else float("inf")
        record = {"isolated_ids": [dataset.samples[i].id for i in isolated],
                  "isolated_max_nll": round(float(nll[isolated].max()), 4),
                  "ceiling_nll": round(self.ceiling, 4), "unlearn_losses": []}
        if self.cfg["unlearn_steps"]:
            record["unlearn_losses"] = self._unlearn(model, data, optimizer, cfg, isolated)
        data.use_dataset(dataset)
        return {"abl": record}

    def _unlearn(self, model, data, optimizer, cfg, isolated) -> list:
        lr = self.cfg["unlearn_lr"] or 0.1 * cfg.lr
        params = [p for group in optimizer.param_groups for p in group["params"]]
        data.use_dataset(data.dataset.subset([data.dataset.samples[i] for i in sorted(isolated)]))
        self.ascent, losses = True, []
        model.train()
        try:
            for step in range(self.cfg["unlearn_steps"]):
                results = data.runtime.step(data, step, lr, label="unlearn", clip_params=params)
                losses.append(round(data.runtime.mean_logs(results)["loss"], 6))
        finally:
            self.ascent = False
        return losses
