"""Which tables the report writes, in the layout of the paper's tables, and which rows they hold.

* ``main-<test>-<k>shot``: the paper's Table 1 / 5 (rows: attack x method; columns: caption
  metrics (or VQA accuracy) and ASR), one per test set and shot count;
* ``halves-<test>-<k>shot``: ours, ASR by trigger half (full / image only / text only) and
  the false-trigger rate;
* ``components-<ctx>``: Table 2 (VanillaIT, AAR only, IDR only, RobustIT, with training time);
* ``alpha-gamma-<ctx>``: Table 3 ((α, γ) grid of CIDEr and ASR; VanillaIT is (0, 1));
* ``beta-<ctx>``: Table 4 (β; VanillaIT is the baseline);
* ``combined-<ctx>``: Table 10 (VanillaIT and RobustIT, each alone and with inference-time
  defenses: prompt filtering, magnitude pruning);
* ``adaptive-<rate>-<mode>-<test>-<k>shot``: Table 8 (BadNet and the adaptive attacker's
  ``adaptive-badnet``, VanillaIT and RobustIT);
* ``vqa-<test>-<k>shot``: Table 7 (attack x method; VQA accuracy and ASR), written for VQA test
  sets instead of the main table;

where ``<ctx>`` is attack, rate, trigger mode, test set and shots. A table is only written
when records for it exist. Paper rows are inserted after our row of the same attack and method.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import paper
from .aggregate import CAPTION_METRICS, Group
from .tables import Column, Row, Table
from .variants import (ATTACK_NAMES, attack_label, attack_rank, inference_rank, is_default_robustit,
                       method_label, method_rank, robustit_params)

METRIC_LABELS = {"BLEU_1": "BLEU-1", "BLEU_2": "BLEU-2", "BLEU_3": "BLEU-3", "BLEU_4": "BLEU-4",
                 "METEOR": "METEOR", "ROUGE_L": "ROUGE-L", "CIDEr": "CIDEr", "SPICE": "SPICE",
                 "VQA_accuracy": "VQA acc. (%)"}
ATTACK_COL = Column("attack", "Data poisoning", "text")
METHOD_COL = Column("method", "IT method", "text")
ASR_COL = Column("ASR", "ASR (%)")
TIME_COL = Column("wall_seconds", "Time (s)")
VQA_COL = Column("VQA_accuracy", METRIC_LABELS["VQA_accuracy"])
#: the paper's Table 10 and Table 8 columns
COMBINED_METRICS = ("BLEU_1", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr")
ADAPTIVE_METRICS = ("BLEU_1", "BLEU_4", "METEOR", "CIDEr")
HALF_COLS = [Column("ASR_both", "ASR full trigger (%)"), Column("ASR_image", "ASR image half only (%)"),
             Column("ASR_text", "ASR text half only (%)"), Column("false_trigger", "False trigger (%)")]
PAPER_VALUE_NAMES = {"wall_seconds": "train_seconds"}
NO_ATTACK_NOTE = ("For 'No attack' rows the ASR column is the false-trigger rate (the target output "
                  "on clean inputs), our reading of the paper's ASR for No Attack.")
STAT_NOTE = "Our cells: mean ± sample std over seeds (n = seeds); n=1 is a single seed, not a mean."


def metric_columns() -> List[Column]:
    return [Column(m, METRIC_LABELS[m]) for m in (*CAPTION_METRICS, "VQA_accuracy")]


def shots_word(shots: int) -> str:
    return {0: "Zero-shot", 1: "One-shot"}.get(shots, f"{shots}-shot")


def test_title(test_set: str) -> str:
    """``test-a (stands in for MSCOCO)``."""
    analogue = paper.ANALOGUES.get(test_set)
    return f"{test_set} (stands in for {analogue})" if analogue else test_set


def our_cells(group: Group) -> Dict:
    """Every figure of a group, with ASR falling back to the false-trigger rate for no attack."""
    cells = {name: group.stat(name) for name in group.stats}
    cells["ASR"] = group.stat("false_trigger" if group.key["attack"] == "none" else "ASR_both")
    return cells


def paper_row(names: Sequence[str], group: Group, text_cells: Dict) -> Optional[Tuple[str, Row]]:
    """(row id, the paper's row matching this group's attack, method and params), or None."""
    found = paper.matching_row(names, group.key)
    if found is None:
        return None
    values = {name: found["values"].get(PAPER_VALUE_NAMES.get(name, name))
              for name in (*CAPTION_METRICS, "VQA_accuracy", "ASR", "wall_seconds")}
    theirs = method_label({"method": found["row"]["method"], "params": found["row"]["params"],
                           "inference": found["row"].get("inference") or {}})[0]
    cells = {**values, **text_cells, "method": f"{theirs}, {found['label']}"}
    return found["row_id"], Row(cells, source=f"{found['label']}: {found['source']}")


def with_paper_rows(rows: List[Tuple[Group, Row]], names: Sequence[str],
                    text_cells: Callable[[Group], Dict]) -> List[Row]:
    """Our rows, each followed by the paper's matching row (each paper row shown once)."""
    out, shown = [], set()
    for group, row in rows:
        out.append(row)
        found = paper_row(names, group, text_cells(group)) if names else None
        if found is not None and found[0] not in shown:
            shown.add(found[0])
            out.append(found[1])
    return out


def paper_attack_cells(group: Group) -> Dict:
    """Attack cell of a paper row: the paper poisons 1 % of the training set."""
    attack = group.key["attack"]
    return {"attack": ATTACK_NAMES["none"] if attack == "none" else f"{ATTACK_NAMES.get(attack, attack)} 1%"}


def paper_notes(names: Sequence[str]) -> List[str]:
    """Where each paper table's numbers come from, and what was assumed."""
    notes = []
    for name in names:
        t = paper.table(name)
        rate = f"{float(t.get('poison_rate', 0.01)) * 100:g}%"
        notes.append(f"{paper.source_label(name)}: {t['where']} ({t['model']}, {rate} poisoning, "
                     f"{shots_word(int(t.get('shots', 0))).lower()}). {t.get('notes', '')}".rstrip())
    return notes


def split_by_test(groups: Sequence[Group]) -> Dict[Tuple[str, int], List[Group]]:
    """Groups per (test set, shots), in a stable order."""
    out: Dict[Tuple[str, int], List[Group]] = {}
    for g in groups:
        out.setdefault((g.key["test_set"], int(g.key["shots"])), []).append(g)
    return dict(sorted(out.items()))


def _attack_method_rows(groups: Sequence[Group]) -> List[Tuple[Group, Row]]:
    """Our rows of the main role (attack x method), in the paper's order; [] when none."""
    mains = [g for g in groups if method_label(g.key)[1] == "main"]
    mains.sort(key=lambda g: (attack_rank(g.key), method_rank(method_label(g.key)[0])))
    return [(g, Row({**our_cells(g), "attack": attack_label(g.key), "method": method_label(g.key)[0]}))
            for g in mains]


def main_table(test_set: str, shots: int, groups: Sequence[Group]) -> Optional[Table]:
    """The paper's Table 1 / 5 layout for one test set and shot count."""
    rows = _attack_method_rows(groups)
    if not rows:
        return None
    names = paper.tables_for("main", test_set, shots)
    table = Table(f"main-{test_set}-{shots}shot", f"{shots_word(shots)} results on {test_title(test_set)}",
                  [ATTACK_COL, METHOD_COL, *metric_columns(), ASR_COL],
                  with_paper_rows(rows, names, paper_attack_cells))
    table.notes = [STAT_NOTE, NO_ATTACK_NOTE, *paper_notes(_used(table, names))]
    return table.drop_empty_columns()


def _used(table: Table, names: Sequence[str]) -> List[str]:
    """The paper tables that actually contributed a row (only those get a source note)."""
    sources = {r.source for r in table.rows if r.is_paper}  # "<label>: <where>", as paper_row writes
    return [n for n in names if f"{paper.source_label(n)}: {paper.table(n)['where']}" in sources]


def halves_table(test_set: str, shots: int, groups: Sequence[Group]) -> Optional[Table]:
    """ASR per trigger half and the false-trigger rate (ours; the paper has no such table)."""
    attacked = [g for g in groups if g.key["attack"] != "none" and method_label(g.key)[1] == "main"]
    if not attacked:
        return None
    attacked.sort(key=lambda g: (attack_rank(g.key), method_rank(method_label(g.key)[0])))
    rows = [Row({**our_cells(g), "attack": attack_label(g.key), "method": method_label(g.key)[0]})
            for g in attacked]
    notes = [STAT_NOTE, "Full trigger: image and text triggers together (the paper's ASR); image / "
             "text half: only that half of the trigger; false trigger: clean inputs."]
    return Table(f"halves-{test_set}-{shots}shot",
                 f"ASR by trigger half, {shots_word(shots).lower()}, {test_title(test_set)}",
                 [ATTACK_COL, METHOD_COL, *HALF_COLS], rows, notes)


# --- ablation tables (the paper's Tables 2-4), one per attack context -------------------

def _context(key: Dict) -> Tuple:
    """What an ablation table holds fixed: attack, rate, trigger mode, test set, shots."""
    return (attack_rank(key), key["test_set"], int(key["shots"]))


def _context_slug(key: Dict) -> str:
    rate = f"{float(key.get('rate', 0.0)):g}"
    mode = key.get("text_trigger_mode", "paper")
    return f"{key['attack']}-{rate}-{mode}-{key['test_set']}-{int(key['shots'])}shot"


def _context_title(key: Dict) -> str:
    return f"{attack_label(key)}, {shots_word(int(key['shots'])).lower()}, {test_title(key['test_set'])}"


def split_by_context(groups: Sequence[Group]) -> List[List[Group]]:
    """Groups per ablation context, in the paper's attack order."""
    out: Dict[Tuple, List[Group]] = {}
    for g in groups:
        out.setdefault(_context(g.key), []).append(g)
    return [out[k] for k in sorted(out)]


def _fmt(value: float) -> str:
    return f"{float(value):g}"


def _ablation_rows(groups: Sequence[Group], role: str) -> List[Group]:
    """VanillaIT, default RobustIT (both without inference-time defenses) and the groups of
    this ablation role."""
    plain = [g for g in groups if not g.key.get("inference")
             and (g.key["method"] == "vanilla" or is_default_robustit(g.key))]
    return plain + [g for g in groups if method_label(g.key)[1] == role and g not in plain]


def _label_cells(spec: Dict, group: Group) -> Dict:
    """The ablation's label column (e.g. ``(α, γ)``) for one group; {} for Table 2."""
    return {spec["label_col"].name: spec["label"](group)} if "label_col" in spec else {}


def _ablation_table(groups: Sequence[Group], role: str, spec: Dict) -> Optional[Table]:
    """One ablation table of ``role`` for one context, or None when that ablation was not run."""
    if not any(method_label(g.key)[1] == role for g in groups):
        return None
    chosen = sorted(_ablation_rows(groups, role), key=spec["order"])
    label_cells = partial(_label_cells, spec)
    rows = [(g, Row({**our_cells(g), **label_cells(g), "method": method_label(g.key)[0]})) for g in chosen]
    key = groups[0].key
    names = paper.tables_for(role, key["test_set"], int(key["shots"]))
    cols = ([spec["label_col"]] if "label_col" in spec else []) + [METHOD_COL, *spec["columns"]]
    table = Table(f"{spec['prefix']}-{_context_slug(key)}", f"{spec['title']}: {_context_title(key)}",
                  cols, with_paper_rows(rows, names, label_cells))
    table.notes = [STAT_NOTE, *spec.get("notes", []), *paper_notes(_used(table, names))]
    return table.drop_empty_columns()


_COMPONENT_ORDER = {"VanillaIT": 0, "AAR only": 1, "IDR only": 2, "RobustIT": 3}


def _components_order(g: Group) -> Tuple:
    label = method_label(g.key)[0]
    return (_COMPONENT_ORDER.get(label.split(" (")[0], 4), label)


def _alpha_gamma(g: Group) -> Tuple[float, float]:
    """(α, γ) of a group; VanillaIT is (0, 1) as in the paper's Table 3."""
    if g.key["method"] == "vanilla":
        return (0.0, 1.0)
    p = robustit_params(g.key.get("params") or {})
    return (p["alpha"], p["gamma"])


def _beta(g: Group) -> Tuple[int, float]:
    """Sort key for Table 4: the VanillaIT baseline first, then by β."""
    if g.key["method"] == "vanilla":
        return (0, 0.0)
    return (1, robustit_params(g.key.get("params") or {})["beta"])


def _combined_order(g: Group) -> Tuple:
    """Table 10's order: each tuning method alone, then with its inference-time defenses."""
    base = method_label({**g.key, "inference": {}})[0]
    return (method_rank(base), inference_rank(g.key.get("inference") or {}))


ABLATIONS = {
    "components": {"prefix": "components", "title": "Ablation of RobustIT's components (cf. paper Table 2)",
                   "order": _components_order,
                   "columns": [*metric_columns(), ASR_COL, TIME_COL],
                   "notes": ["Time: training wall-clock seconds (cells may have run with different "
                             "thread settings or machine load; compare with care)."]},
    "alpha_gamma": {"prefix": "alpha-gamma", "title": "IDR weight α and AAR keep ratio γ (cf. paper Table 3)",
                    "order": lambda g: (_alpha_gamma(g), method_label(g.key)[0]),
                    "label_col": Column("alpha_gamma", "(α, γ)", "text"),
                    "label": lambda g: "({}, {})".format(*map(_fmt, _alpha_gamma(g))),
                    "columns": [Column("CIDEr", "CIDEr"), ASR_COL],
                    "notes": ["(0, 1) is VanillaIT, as in the paper."]},
    "beta": {"prefix": "beta", "title": "AAR momentum β (cf. paper Table 4)",
             "order": lambda g: (_beta(g), method_label(g.key)[0]),
             "label_col": Column("beta", "β", "text"),
             "label": lambda g: "baseline" if g.key["method"] == "vanilla" else f"β = {_fmt(_beta(g)[1])}",
             "columns": [*metric_columns(), ASR_COL],
             "notes": ["baseline is VanillaIT, as in the paper."]},
    "combined": {"prefix": "combined", "title": "Combined defenses (cf. paper Table 10)",
                 "order": _combined_order,
                 "columns": [*[Column(m, METRIC_LABELS[m]) for m in COMBINED_METRICS], ASR_COL],
                 "notes": ["Inference-time defenses are applied at evaluation only, to the same "
                           "training run as the row without them: prompt filter = blacklisted "
                           "words removed from every instruction (perfect: our attacks' text "
                           "triggers; realistic: trigger words from the literature); magnitude "
                           "pruning = that share of each adapter weight matrix zeroed, smallest "
                           "|w| first (docs/baselines.md)."]},
}


def ablation_tables(groups: Sequence[Group]) -> List[Table]:
    """Every ablation table for which records exist (attack contexts without one write none)."""
    out = []
    for context in split_by_context(groups):
        for role, spec in ABLATIONS.items():
            table = _ablation_table(context, role, spec)
            if table is not None:
                out.append(table)
    return out


# --- the adaptive adversary (the paper's Table 8) --------------------------------------

ADAPTIVE_ATTACKS = ("badnet", "adaptive-badnet")


def _adaptive_context(key: Dict) -> Tuple:
    return (float(key.get("rate", 0.0)), key.get("text_trigger_mode", "paper"), key["test_set"],
            int(key["shots"]))


def adaptive_tables(groups: Sequence[Group]) -> List[Table]:
    """Table 8's layout (BadNet vs the adaptive attacker, VanillaIT vs RobustIT), one per rate,
    trigger mode, test set and shots that has ``adaptive-badnet`` records."""
    chosen = [g for g in groups if g.key["attack"] in ADAPTIVE_ATTACKS and not g.key.get("inference")
              and (g.key["method"] == "vanilla" or is_default_robustit(g.key))]
    contexts: Dict[Tuple, List[Group]] = {}
    for g in chosen:
        contexts.setdefault(_adaptive_context(g.key), []).append(g)
    return [t for ctx in sorted(contexts) for t in [_adaptive_table(contexts[ctx])] if t is not None]


def _adaptive_table(groups: List[Group]) -> Optional[Table]:
    if not any(g.key["attack"] == "adaptive-badnet" for g in groups):
        return None
    groups = sorted(groups, key=lambda g: (method_rank(method_label(g.key)[0]), attack_rank(g.key)))
    rows = [(g, Row({**our_cells(g), "attack": attack_label(g.key), "method": method_label(g.key)[0]}))
            for g in groups]
    key = groups[0].key
    rate, mode, test_set, shots = _adaptive_context(key)
    names = paper.tables_for("adaptive", test_set, shots)
    cols = [ATTACK_COL, METHOD_COL, *[Column(m, METRIC_LABELS[m]) for m in ADAPTIVE_METRICS], ASR_COL]
    table = Table(f"adaptive-{rate:g}-{mode}-{test_set}-{shots}shot",
                  f"Adaptive adversary (cf. paper Table 8): {shots_word(shots).lower()}, {test_title(test_set)}",
                  cols, with_paper_rows(rows, names, paper_attack_cells))
    table.notes = [STAT_NOTE, "Adaptive BadNet: a BadNet-style patch whose pixels the attacker optimised "
                   "through RobustIT's augmentations and AAR mask on a surrogate copy of the base model "
                   "(robustit/attacks/adaptive.py); 'RobustIT' under it is the paper's 'RobustIT "
                   "(adaptive)', under BadNet its 'RobustIT (static)'.", *paper_notes(_used(table, names))]
    return table.drop_empty_columns()


# --- VQA (the paper's Table 7) ----------------------------------------------------------

def is_vqa(groups: Sequence[Group]) -> bool:
    """Whether these groups were evaluated on a VQA set (they carry VQA accuracy)."""
    return any(g.stat("VQA_accuracy") is not None for g in groups)


def vqa_table(test_set: str, shots: int, groups: Sequence[Group]) -> Optional[Table]:
    """Table 7's layout for a VQA test set: attack x method, VQA accuracy and ASR."""
    rows = _attack_method_rows(groups)
    if not rows:
        return None
    names = paper.tables_for("vqa", test_set, shots)
    table = Table(f"vqa-{test_set}-{shots}shot", f"{shots_word(shots)} VQA results on {test_title(test_set)} "
                  f"(cf. paper Table 7)", [ATTACK_COL, METHOD_COL, VQA_COL, ASR_COL],
                  with_paper_rows(rows, names, paper_attack_cells))
    table.notes = [STAT_NOTE, NO_ATTACK_NOTE, "VQA accuracy: VQAv2 rules (robustit/eval/vqa.py), "
                   "in percent.", *paper_notes(_used(table, names))]
    return table


def build_tables(groups: Sequence[Group]) -> List[Table]:
    """All tables: main (or VQA) and halves per test set and shots, then the ablations, the
    combined defenses and the adaptive adversary."""
    out: List[Table] = []
    for (test_set, shots), members in split_by_test(groups).items():
        first = vqa_table if is_vqa(members) else main_table
        out += [t for t in (first(test_set, shots, members), halves_table(test_set, shots, members)) if t]
    return out + ablation_tables(groups) + adaptive_tables(groups)
