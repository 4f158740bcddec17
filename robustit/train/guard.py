"""``guard``: screen the instruction data on the frozen base, repair or drop the suspects, tune.

The screen (``robustit.defenses.screening``, the same as ``robustit audit``) runs once before the
first step on the loop's own decoded images and cached vision features, so it costs forward
passes only (about 1 + ``other_images`` forwards per sample, against 3 forwards + 2 backwards
per sample and epoch for tuning). Flagged samples are then repaired (their response replaced by
another reference the record carries, or the base's own response) or dropped, and the rest of
the run is VanillaIT, or IDR on top (``idr=true``, RobustIT with ``components=idr``).

Parameters (``--param KEY=VALUE``; every one recorded in train.json and RUN/screen.json):
    action: repair (default) | drop | keep (screen and record only).
    repair_source: auto (default: references, then VQA answers, then generate) | references |
        answers | generate.
    idr: false (default) | true: tune the kept data with IDR.
    signals, threshold, flag_share, other_images, surprise_tokens, batch_size, ngram_*,
        assoc_*, grounding_reference, seed: the screen's settings (``ScreenConfig``; ``signals``
        a comma-separated string or a list; ``seed`` defaults to the run's ``--seed``).
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import torch

from ..config import config_from_dict, config_to_dict
from ..defenses.screening.config import ScreenConfig
from ..defenses.screening.likelihood import VisionInputs
from ..defenses.screening.repair import ACTIONS, SOURCES, apply_decisions, check_choice
from ..defenses.screening.screen import screen_dataset
from ..errors import ConfigError
from .batching import Batch
from .methods import METHODS, Method

OWN_KEYS = ("action", "repair_source", "idr")


@METHODS.register("guard")
class Guard(Method):
    """Screen -> repair / drop -> tune (VanillaIT, or IDR with ``idr=true``)."""

    name = "guard"

    def __init__(self, params: Dict | None = None) -> None:
        self.params = dict(params or {})
        screen_keys = {f.name for f in dataclasses.fields(ScreenConfig)} - {"notes", "max_len"}
        unknown = sorted(set(self.params) - set(OWN_KEYS) - screen_keys)
        if unknown:
            raise ConfigError(f"unknown guard parameter(s) {unknown}; valid: {sorted(set(OWN_KEYS) | screen_keys)}")
        self.action = check_choice("action", self.params.get("action", "repair"), ACTIONS)
        self.source = check_choice("repair_source", self.params.get("repair_source", "auto"), SOURCES)
        idr = self.params.get("idr", False)
        if not isinstance(idr, bool):
            raise ConfigError(f"guard parameter idr must be true or false; got {idr!r}")
        screen = {k: v for k, v in self.params.items() if k in screen_keys}
        if isinstance(screen.get("signals"), str):
            screen["signals"] = tuple(s.strip() for s in screen["signals"].split(",") if s.strip())
        self.screen_cfg = config_from_dict(ScreenConfig, screen, "guard screen")
        self.inner = METHODS.get("robustit")({"components": "idr"}) if idr else None

    @property
    def augments_images(self) -> bool:  # type: ignore[override]
        return bool(self.inner is not None and self.inner.augments_images)

    def describe(self) -> Dict:
        return {"name": self.name, "params": self.params, "action": self.action,
                "repair_source": self.source, "screen": config_to_dict(self.screen_cfg),
                "idr": self.inner.describe() if self.inner is not None else None}

    def screen(self, model, data, progress: bool = False):
        seed = self.screen_cfg.seed if "seed" in self.params else data.cfg.seed  # the run's, unless given
        cfg = dataclasses.replace(self.screen_cfg, max_len=data.cfg.max_len, seed=seed)
        vision = VisionInputs(model, data.dataset, features=data.features, store=data.store)
        result = screen_dataset(model, data.dataset, cfg, vision=vision, progress=progress)
        kept, decisions = apply_decisions(data.dataset, result.flagged, self.action, self.source,
                                          model=model, vision=vision, progress=progress)
        summary = {**result.summary(), **{k: v for k, v in decisions.items() if k != "source_by_id"}}
        return kept, {"summary": summary, "repair_sources": decisions.get("source_by_id", {}),
                      "samples": result.rows()}

    def setup(self, model) -> None:
        if self.inner is not None:
            self.inner.setup(model)

    def loss(self, model, batch: Batch, generator: torch.Generator):
        if self.inner is not None:
            return self.inner.loss(model, batch, generator)
        return super().loss(model, batch, generator)


@METHODS.register("byorn")
class BYORn(Guard):
    """BYORn (ICML 2026) as a baseline, adapted to adapter + embedding tuning (docs/audit.md):
    flag the 40 % of samples whose response the frozen base finds least likely (mean token NLL)
    and replace those responses with the frozen base's own greedy responses. Reading of ours:
    the paper regenerates with an EMA copy of the model being tuned; here the frozen base (the
    model at the start of that EMA) generates once, before tuning. Any guard parameter
    overrides these defaults."""

    name = "byorn"
    DEFAULTS = {"signals": "likelihood", "flag_share": 0.4, "action": "repair", "repair_source": "generate"}

    def __init__(self, params: Dict | None = None) -> None:
        super().__init__({**self.DEFAULTS, **dict(params or {})})
        self.params = dict(params or {})
