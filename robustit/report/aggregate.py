"""Group bench cell records over seeds and summarise every number as mean, sample std and n.

A cell's key identifies what was run; ``seed`` is the only key field a report averages over,
so a *group* is every record whose key is equal once the seed is removed. Every figure a
table or plot shows comes from a :class:`Stat` of a group, never from one record alone, so a
single seed is always shown as ``n=1`` rather than passed off as a mean.

Imports neither torch nor pandas: the report must run on a machine that only has the results.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

CAPTION_METRICS = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
HALVES = ("both", "image", "text")

# RobustIT's defaults (robustit/defenses/idr.py IDRConfig.alpha, aar.py AARConfig.beta/gamma,
# robustit/train/robustit_method.py split_params). Copied, not imported: importing the
# defenses would import torch. tests/test_report.py checks they still agree with the source.
ROBUSTIT_DEFAULTS = {"components": "both", "alpha": 2.0, "beta": 0.9, "gamma": 0.5}


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (0 for n = 1) and count of one figure over seeds."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Optional["Stat"]:
        """Stat of the non-missing values, or None when there are none."""
        vals = [float(v) for v in values if v is not None]
        if not vals:
            return None
        mean = sum(vals) / len(vals)
        if len(vals) == 1:
            return cls(mean, 0.0, 1)
        var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
        return cls(mean, math.sqrt(var), len(vals))

    def text(self, digits: int = 1) -> str:
        """``m ± s (n=k)``, or ``m (n=1)`` for one seed (no std is claimed from one value)."""
        if self.n == 1:
            return f"{self.mean:.{digits}f} (n=1)"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} (n={self.n})"


def lookup(obj: Any, *path: str) -> Any:
    """Nested lookup that returns None wherever a level is missing or null."""
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _asr_entry(record: Dict) -> Optional[Dict]:
    """The ``eval.asr`` entry of the cell's attack (the only entry when names differ)."""
    asr = lookup(record, "eval", "asr") or {}
    attack = record["key"]["attack"]
    if attack in asr:
        return asr[attack]
    return next(iter(asr.values())) if len(asr) == 1 else None


def _vqa_accuracy(record: Dict) -> Optional[float]:
    """VQA accuracy: ``eval.metrics.VQA_accuracy`` (robustit/eval/evaluate.py), else ``eval.vqa``."""
    value = lookup(record, "eval", "metrics", "VQA_accuracy")
    if value is None:
        vqa = lookup(record, "eval", "vqa")
        value = vqa.get("accuracy") if isinstance(vqa, dict) else vqa
    return value if isinstance(value, (int, float)) else None


def _figure_getters() -> Dict[str, Callable[[Dict], Any]]:
    """Figure name -> how to read it from a cell record (None when absent)."""
    getters: Dict[str, Callable[[Dict], Any]] = {
        m: (lambda r, m=m: lookup(r, "eval", "metrics", m)) for m in CAPTION_METRICS}
    getters["VQA_accuracy"] = _vqa_accuracy
    for half in HALVES:
        getters[f"ASR_{half}"] = lambda r, h=half: lookup(_asr_entry(r), h, "rate_percent")
    getters["false_trigger"] = lambda r: lookup(r, "eval", "false_trigger_rate", "rate_percent")
    getters["wall_seconds"] = lambda r: lookup(r, "train", "wall_seconds")
    return getters


FIGURES = _figure_getters()


def figures_of(record: Dict) -> Dict[str, Optional[float]]:
    """Every numeric figure of one record (non-numbers become None)."""
    out = {}
    for name, get in FIGURES.items():
        value = get(record)
        out[name] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return out


def key_without_seed(key: Dict) -> Dict:
    """The group key: the cell key minus ``seed``, with ``inference`` ({} in records written
    before the field existed: robustit/bench/schema.py KEY_DEFAULTS)."""
    return {"inference": {}, **{k: v for k, v in key.items() if k != "seed"}}


def canonical(obj: Any) -> str:
    """Stable JSON text used to compare keys (dict order never matters)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass
class Group:
    """All seeds of one cell key: the records and the statistics of every figure."""

    key: Dict
    records: List[Dict] = field(default_factory=list)
    stats: Dict[str, Optional[Stat]] = field(default_factory=dict)

    @property
    def seeds(self) -> List[Any]:
        return sorted(r["key"]["seed"] for r in self.records)

    def stat(self, name: str) -> Optional[Stat]:
        return self.stats.get(name)

    def summarise(self) -> None:
        """(Re)compute the statistics from the records."""
        per_record = [figures_of(r) for r in self.records]
        self.stats = {name: Stat.of([f[name] for f in per_record]) for name in FIGURES}


def dedupe(records: Sequence[Dict]) -> Tuple[List[Dict], List[str]]:
    """Drop records whose full key (seed included) was already seen: a seed counts once."""
    seen: Dict[str, str] = {}
    kept, warnings = [], []
    for record in records:
        full = canonical({"inference": {}, **record["key"]})
        if full in seen:
            warnings.append(f"cell {record.get('id')}: same key and seed as cell {seen[full]} "
                            f"(given twice in --results?); counted once")
            continue
        seen[full] = str(record.get("id"))
        kept.append(record)
    return kept, warnings


def aggregate(records: Sequence[Dict]) -> Tuple[List[Group], List[str]]:
    """Groups (in first-seen order) of the records over seeds, and warnings about duplicates."""
    kept, warnings = dedupe(records)
    groups: Dict[str, Group] = {}
    for record in kept:
        key = key_without_seed(record["key"])
        groups.setdefault(canonical(key), Group(key=key)).records.append(record)
    for group in groups.values():
        group.summarise()
    return list(groups.values()), warnings
