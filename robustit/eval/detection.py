"""How well a screen found the poisoned samples: the answer key is read only here.

Reported as BYE, TCAP and BackdoorBench's detection scripts do: TP / FP / FN / TN, precision,
recall, F1 and FPR at the screen's decision, AUROC of its continuous score and TPR at 1 % FPR.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from ..errors import DataError


def poisoned_ids(manifest_path: str | Path) -> set:
    """The ids a poisoning manifest marks as poisoned (raises DataError naming the file)."""
    path = Path(manifest_path)
    try:
        manifest = json.loads(path.read_text())
        return {str(i) for i in manifest["poisoned_ids"]}
    except FileNotFoundError:
        raise DataError(f"--manifest {path}: no such file") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"--manifest {path}: not a robustit poisoning manifest ({type(exc).__name__}: "
                        f"{exc}); pass the manifest.json that `robustit poison` wrote") from None


def detection_metrics(ids: Sequence[str], score: np.ndarray, flagged: np.ndarray, poisoned: set) -> Dict:
    """Detection quality of ``flagged`` / ``score`` against the ids in ``poisoned``.

    Args:
        ids: (N,) sample ids in the screen's order.
        score: (N,) suspicion (higher = more suspicious).
        flagged: (N,) bool decisions.
        poisoned: the truly poisoned ids (ids not in ``ids`` are ignored).
    Returns:
        tp, fp, fn, tn, precision, recall, f1, fpr, share_flagged, auroc, tpr_at_1pct_fpr
        (percentages x100 where a rate; auroc in [0, 1]; None where undefined).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    truth = np.array([i in poisoned for i in ids])
    flagged = np.asarray(flagged, dtype=bool)
    tp = int((truth & flagged).sum())
    fp = int((~truth & flagged).sum())
    fn = int((truth & ~flagged).sum())
    tn = int((~truth & ~flagged).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall > 0 else
          (0.0 if tp + fn else None))
    out = {"n": len(ids), "n_poisoned": int(truth.sum()), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
           "precision": _pct(precision), "recall": _pct(recall), "f1": _pct(f1),
           "fpr": _pct(fp / (fp + tn) if fp + tn else None),
           "share_flagged": _pct(float(flagged.mean()) if len(ids) else None),
           "auroc": None, "tpr_at_1pct_fpr": None}
    if 0 < truth.sum() < len(truth):
        out["auroc"] = round(float(roc_auc_score(truth, score)), 4)
        fpr, tpr, _ = roc_curve(truth, score)
        out["tpr_at_1pct_fpr"] = _pct(float(tpr[fpr <= 0.01].max()))
    return out


def _pct(x) -> float | None:
    return None if x is None else round(100.0 * x, 2)


def format_metrics(m: Dict) -> List[str]:
    """Human lines for the terminal."""
    def f(key, unit="%"):
        v = m.get(key)
        return "-" if v is None else f"{v:g}{unit}"
    return [f"poisoned {m['n_poisoned']} of {m['n']}; flagged {m['tp'] + m['fp']} "
            f"(TP {m['tp']}, FP {m['fp']}, FN {m['fn']})",
            f"precision {f('precision')}  recall {f('recall')}  F1 {f('f1')}  FPR {f('fpr')}  "
            f"AUROC {f('auroc', '')}  TPR@1%FPR {f('tpr_at_1pct_fpr')}"]
