"""Screen an instruction set: score every sample for suspicion and flag the outliers.

Attack-agnostic by construction: it reads the samples (images, instructions, responses, tasks)
and a frozen base model, never the answer key (which samples were poisoned), a trigger or an
attack name.

Combination (a recorded reading, docs/audit.md): each model signal is robust-z-scored within
its task; the score is the largest of them, so a sample is suspect when *any* signal makes it
an outlier (a fixed target is improbable, an in-world target ungrounded, an inserted phrase
surprising). ``duplicates`` sums the grounding evidence over all samples that give the same
response (Stouffer's z), since clean captions of look-alike scenes repeat too but stay grounded. Then ``trigger_ngrams`` finds instruction
n-grams that the flagged samples share and the rest lack, and raises every sample carrying one
to the threshold plus its own score's excess, so a poisoned sample that reads plausibly is still
caught by its text trigger. Before it, ``associations`` flags, from the text alone, the samples
that carry an instruction n-gram after which one response word is near-certain (a trigger and
its target, even a plausible wrong label the base cannot see).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ...config import config_to_dict
from ...data.records import InstructionSet
from ...seeding import derive_seed, numpy_rng
from . import signals as sig
from .config import ScreenConfig
from .likelihood import VisionInputs, score_tokens

@dataclass
class ScreenResult:
    """What a screen found.

    Attributes:
        ids: sample ids, in data order.
        tasks: each sample's task.
        raw: signal name -> (N,) raw values (nats, log2 counts; higher = more suspicious).
        z: signal name -> (N,) robust z within task.
        score: (N,) combined suspicion (robust z units).
        flagged: (N,) bool, ``score > cfg.threshold``.
        trigger_ngrams: n-gram -> {"count", "flagged"} found by ``trigger_ngrams``.
        carried: per sample, the trigger n-gram it carries ('' if none).
        associations: n-gram -> {"word", "count", "hits", "base_rate", "task"} found by
            ``associations``; associated: per sample, the one whose word it says ('' if none).
        seconds: wall time of each stage.
    """

    ids: List[str]
    tasks: List[str]
    raw: Dict[str, np.ndarray]
    z: Dict[str, np.ndarray]
    score: np.ndarray
    flagged: np.ndarray
    cfg: ScreenConfig
    trigger_ngrams: Dict[str, dict] = field(default_factory=dict)
    carried: List[str] = field(default_factory=list)
    associations: Dict[str, dict] = field(default_factory=dict)
    associated: List[str] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)

    def rows(self) -> List[dict]:
        """One JSON-ready dict per sample: id, task, every signal (raw and z), score, decision."""
        out = []
        for i, sid in enumerate(self.ids):
            row = {"id": sid, "task": self.tasks[i], "score": round(float(self.score[i]), 4),
                   "flagged": bool(self.flagged[i])}
            row.update({name: _num(v[i]) for name, v in self.raw.items()})
            row.update({f"z_{name}": _num(v[i]) for name, v in self.z.items()})
            if self.carried:
                row["trigger_ngram"] = self.carried[i]
            if self.associated:
                row["association"] = self.associated[i]
            out.append(row)
        return out

    def summary(self) -> dict:
        return {"n_samples": len(self.ids), "n_flagged": int(self.flagged.sum()),
                "share_flagged": round(float(self.flagged.mean()) if len(self.ids) else 0.0, 6),
                "trigger_ngrams": self.trigger_ngrams, "associations": self.associations,
                "seconds": self.seconds,
                "config": config_to_dict(self.cfg)}


def _num(x) -> float | None:
    """A JSON-ready rounded float; None where a signal was not computed for the sample."""
    return round(float(x), 4) if np.isfinite(x) else None


def screen_dataset(model, dataset: InstructionSet, cfg: ScreenConfig,
                   vision: Optional[VisionInputs] = None, progress: bool = True) -> ScreenResult:
    """Score and flag every sample of ``dataset`` under the frozen ``model``.

    Args:
        model: an LVLM (the base model; left in the mode it came in, no gradient).
        dataset: the instruction set to screen.
        cfg: which signals, the threshold, batch size.
        vision: cached vision inputs to reuse (the tuning loop's feature cache), else built here.
    """
    t0 = time.perf_counter()
    raw: Dict[str, np.ndarray] = {}
    seconds: Dict[str, float] = {}
    tasks = [s.task for s in dataset.samples]
    groups = sig.response_groups(dataset)
    repeats = sig.repeated(groups, [tuple(s.image_ids) for s in dataset.samples])
    reference = None
    if cfg.needs_model:
        vision = vision or VisionInputs(model, dataset, progress=progress)
        seconds["vision"] = round(time.perf_counter() - t0, 3)
        t1 = time.perf_counter()
        grounded_rows, reference = _grounding_rows(repeats, tasks, cfg)
        scores = score_tokens(model, dataset, cfg, vision, progress=progress,
                              grounding="grounding" in cfg.signals or "duplicates" in cfg.signals,
                              grounded_rows=grounded_rows)
        seconds["scoring"] = round(time.perf_counter() - t1, 3)
        raw.update(_model_signals(scores, cfg))
    z = {name: sig.robust_z(v, tasks, reference=reference if name == "ungrounded" else None)
         for name, v in raw.items()}
    if "duplicates" in cfg.signals:  # already a z: the group's median z times sqrt(its size)
        raw["duplicates"] = z["duplicates"] = sig.duplicates(
            groups, [tuple(s.image_ids) for s in dataset.samples], np.nan_to_num(z["ungrounded"]))
    score = combine(z, cfg, len(dataset))
    result = ScreenResult(ids=[s.id for s in dataset.samples], tasks=tasks, raw=raw, z=z,
                          score=score, flagged=decide(score, cfg), cfg=cfg)
    if "associations" in cfg.signals:
        _flag_associations(result, dataset)
    if "trigger_ngrams" in cfg.signals:
        _spread_to_text_triggers(result, dataset)
    result.seconds = {**seconds, "total": round(time.perf_counter() - t0, 3)}
    return result


def _grounding_rows(repeats: np.ndarray, tasks: List[str], cfg: ScreenConfig):
    """(rows scored against other images or None for all, reference mask or None).

    With ``grounding`` on, every sample. With only ``duplicates`` needing it, the samples whose
    response repeats over images, plus a seeded reference of up to ``grounding_reference``
    unique-response samples per task, whose median and MAD scale the z (the repeats alone may
    be mostly poison, so they cannot be their own reference).
    """
    if "grounding" in cfg.signals:
        return None, None
    rng = numpy_rng(derive_seed(cfg.seed, "screen", "grounding-reference"))
    reference = np.zeros(len(tasks), dtype=bool)
    task_arr = np.asarray(tasks)
    for task in sorted(set(tasks)):
        pool = np.flatnonzero((task_arr == task) & ~repeats)
        take = min(len(pool), cfg.grounding_reference)
        reference[rng.choice(pool, size=take, replace=False) if take else []] = True
    return np.flatnonzero(repeats | reference).tolist(), reference


def _model_signals(scores, cfg: ScreenConfig) -> Dict[str, np.ndarray]:
    out = {}
    if "likelihood" in cfg.signals:
        out["likelihood"] = sig.likelihood(scores)
    if scores.other is not None:
        out["ungrounded"] = sig.ungrounded(scores)
    if "surprise" in cfg.signals:
        out["surprise"] = sig.surprise(scores, cfg.surprise_tokens)
    return out


def combine(z: Dict[str, np.ndarray], cfg: ScreenConfig, n: int) -> np.ndarray:
    """The largest oriented z of the switched-on signals."""
    parts = []
    for name, values in z.items():
        if name == "ungrounded" and "grounding" not in cfg.signals:
            continue  # computed for duplicates only
        parts.append(values)
    if not parts:  # text signals only: they flag by themselves
        return np.zeros(n)
    return np.max(np.stack(parts), axis=0)


def decide(score: np.ndarray, cfg: ScreenConfig) -> np.ndarray:
    """Flags: score above the threshold, or (``flag_share``) the top share by score (ties by
    data order, so the count is exact)."""
    if cfg.flag_share is None:
        return score > cfg.threshold
    k = int(round(cfg.flag_share * len(score)))
    flagged = np.zeros(len(score), dtype=bool)
    flagged[np.argsort(-score, kind="stable")[:k]] = True
    return flagged


def _lift(result: ScreenResult, carrying: np.ndarray) -> None:
    """Carriers score at least just above the threshold (keeping their own excess for ranking)
    and are flagged."""
    lifted = result.cfg.threshold + 1e-3 + np.maximum(result.score, 0.0)
    result.score = np.where(carrying, np.maximum(result.score, lifted), result.score)
    result.flagged = result.flagged | carrying


def _flag_associations(result: ScreenResult, dataset: InstructionSet) -> None:
    cfg = result.cfg
    assoc = sig.trigger_associations(dataset, cfg.ngram_max, cfg.ngram_min_count, cfg.ngram_max_share,
                                     cfg.assoc_min_rate, cfg.assoc_alpha)
    result.associations = assoc
    result.associated = sig.associated(dataset, assoc, cfg.ngram_max)
    _lift(result, np.array([bool(g) for g in result.associated], dtype=bool))


def _spread_to_text_triggers(result: ScreenResult, dataset: InstructionSet) -> None:
    cfg = result.cfg
    grams = sig.trigger_ngrams(dataset, result.flagged, cfg.ngram_max, cfg.ngram_min_count,
                               cfg.ngram_purity, cfg.ngram_max_share, cfg.ngram_min_cover)
    result.trigger_ngrams = grams
    result.carried = sig.carries(dataset, grams, cfg.ngram_max)
    _lift(result, np.array([bool(g) for g in result.carried], dtype=bool))
