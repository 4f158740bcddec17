"""The paper's own numbers (``paper_figures.json``) and how our test sets map onto its datasets.

``paper_figures.json`` is transcribed by hand from the paper's text (Tables 1-5, 7, 8, 10 and
11, the last split by dataset into ``table11_mscoco`` and ``table11_flickr30k``);
each table carries where it was found, its caption and notes on anything the transcription had
to decide. A paper row is shown beside ours only where the paper has the same row: the same
attack and method (the paper's parameters a subset of ours, RobustIT's defaults filled in), the
same inference-time defenses, the same dataset (through :data:`ANALOGUES`) and the same shot
count (all the paper's tables are zero-shot except Table 7, VQA, one-shot; its other one-shot
results are radar plots without numbers).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Dict, List, Optional, Sequence

from .variants import robustit_params

#: The one place that says which paper dataset each of our test sets stands in for
#: (docs/data.md: test-a has the training distribution like MSCOCO; test-b is shifted like
#: Flickr30k). Table 5 is the paper's MSCOCO table, Table 1 its Flickr30k table.
TEST_SET_ANALOGUE = {"test-a": "MSCOCO", "test-b": "Flickr30k"}
#: the world's short-answer test set stands in for VQA-2.0 (the paper's Table 7)
VQA_SET_ANALOGUE = {"test-a-vqa": "VQAv2"}
ANALOGUES = {**TEST_SET_ANALOGUE, **VQA_SET_ANALOGUE}
#: Table 11 (the tuning baselines under TrojVQA) is split by dataset; it is searched after the
#: main table, so its VanillaIT and RobustIT rows stand only where Table 1 / 5 has none
MAIN_TABLES = {"MSCOCO": ("table5", "table11_mscoco"), "Flickr30k": ("table1", "table11_flickr30k")}
#: tables of the other layouts (layouts.py), by role: Tables 2-4 (ablations), 7 (VQA),
#: 8 (adaptive adversary), 10 (combined defenses)
ABLATION_TABLES = {"components": ("table2",), "alpha_gamma": ("table3",), "beta": ("table4",),
                   "vqa": ("table7",), "adaptive": ("table8",), "combined": ("table10",)}
PAPER_MODEL = "Otter"


@lru_cache(maxsize=1)
def paper_figures() -> Dict:
    """The parsed ``paper_figures.json`` shipped with the package."""
    text = resources.files(__package__).joinpath("paper_figures.json").read_text(encoding="utf-8")
    return json.loads(text)


def table(name: str) -> Dict:
    """One transcribed table (``table1`` .. ``table5``, ``table7``, ``table8``, ``table10``,
    ``table11_mscoco``, ``table11_flickr30k``)."""
    return paper_figures()["tables"][name]


def tables_for(role: str, test_set: str, shots: int) -> Sequence[str]:
    """Names of the paper tables whose rows may sit beside our table of this role: the same
    dataset (through :data:`ANALOGUES`) and the same shot count as the paper's table."""
    dataset = ANALOGUES.get(test_set)
    if dataset is None:
        return ()
    names = MAIN_TABLES.get(dataset, ()) if role == "main" else ABLATION_TABLES.get(role, ())
    return tuple(n for n in names if table(n)["dataset"] == dataset and int(table(n)["shots"]) == shots)


def _same_params(paper_params: Dict, method: str, ours: Dict) -> bool:
    """The paper's stated parameters all equal ours (RobustIT defaults filled in on our side)."""
    full = robustit_params(ours) if method == "robustit" else dict(ours or {})
    for name, value in paper_params.items():
        mine = full.get(name)
        if isinstance(value, (int, float)) and isinstance(mine, (int, float)):
            if abs(float(value) - float(mine)) > 1e-9:
                return False
        elif value != mine:
            return False
    return True


def _same_inference(paper_options: Dict, ours: Dict) -> bool:
    """The same inference-time defenses (names equal, numbers within 1e-9)."""
    if set(paper_options) != set(ours):
        return False
    for name, value in paper_options.items():
        mine = ours[name]
        if isinstance(value, (int, float)) and isinstance(mine, (int, float)):
            if abs(float(value) - float(mine)) > 1e-9:
                return False
        elif value != mine:
            return False
    return True


def matching_row(names: Sequence[str], key: Dict) -> Optional[Dict]:
    """The first paper row (in ``names`` order) with our group key's attack, method, params and
    inference-time defenses (a paper row without ``inference`` has none).

    Returns ``{"values", "table", "label", "source", "row_id", "row"}`` or None.
    """
    for name in names:
        t = table(name)
        for index, row in enumerate(t["rows"]):
            if row["attack"] == key["attack"] and row["method"] == key["method"] \
                    and _same_params(row["params"], key["method"], key.get("params") or {}) \
                    and _same_inference(row.get("inference") or {}, key.get("inference") or {}):
                return {"values": row["values"], "table": name, "label": source_label(name),
                        "source": t["where"], "row_id": f"{name}/{index}", "row": row}
    return None


def source_label(name: str) -> str:
    """How a paper row is labelled in our tables: ``paper (Otter, Flickr30k)``."""
    return f"paper ({PAPER_MODEL}, {table(name)['dataset']})"


def paper_rows(name: str) -> List[Dict]:
    """All rows of one paper table (for the report's appendix of paper figures)."""
    return list(table(name)["rows"])
