"""A table model and its Markdown, CSV and LaTeX renderers (the HTML one is in ``html.py``).

A :class:`Table` is a list of columns and rows. A cell of a ``stat`` column is either a
:class:`~robustit.report.aggregate.Stat` (ours: shown ``mean ± std (n=k)``, or ``mean (n=1)``),
a plain float (a number transcribed from the paper, shown with its own digits except
trailing zeros: 1.50 -> 1.5) or None (``-``).
Which tables exist and which rows they hold is decided in ``layouts.py``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .aggregate import Stat

OURS = "ours"


@dataclass(frozen=True)
class Column:
    """``kind`` is ``text`` (labels) or ``stat`` (numbers)."""

    name: str
    label: str
    kind: str = "stat"


@dataclass
class Row:
    """One row; ``source`` is ``ours`` or the paper table it was transcribed from."""

    cells: Dict[str, Any]
    source: str = OURS

    @property
    def is_paper(self) -> bool:
        return self.source != OURS


@dataclass
class Table:
    """A titled table with notes, written as ``tables/<name>.{md,csv,tex}``."""

    name: str
    title: str
    columns: List[Column]
    rows: List[Row] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def drop_empty_columns(self) -> "Table":
        """Remove stat columns that no row fills (e.g. SPICE when it was never scored)."""
        self.columns = [c for c in self.columns
                        if c.kind == "text" or any(r.cells.get(c.name) is not None for r in self.rows)]
        return self


def cell_text(value: Any, digits: int = 1) -> str:
    """A cell as text: Stat -> ``m ± s (n=k)``; paper float -> its digits (repr); None -> ``-``."""
    if value is None:
        return "-"
    if isinstance(value, Stat):
        return value.text(digits)
    if isinstance(value, float):
        return repr(value)  # the paper's own digits: 16.0, 81.92, 1206.37
    return str(value)


# --- Markdown ---------------------------------------------------------------------------

def _md_escape(text: str) -> str:
    """Pipes would split a Markdown cell."""
    return text.replace("|", "\\|")


def to_markdown(table: Table) -> str:
    """``### title``, the table, then its notes as a list."""
    lines = [f"### {table.title}", "",
             "| " + " | ".join(_md_escape(c.label) for c in table.columns) + " |",
             "|" + "|".join("---" if c.kind == "text" else "---:" for c in table.columns) + "|"]
    for row in table.rows:
        cells = [_md_escape(cell_text(row.cells.get(c.name))) for c in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    if table.notes:
        lines.append("")
        lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


# --- CSV --------------------------------------------------------------------------------

def csv_header(table: Table) -> List[str]:
    """Text columns by name; every stat column as ``NAME_mean``, ``NAME_std``, ``NAME_n``."""
    head = []
    for c in table.columns:
        head += [c.name] if c.kind == "text" else [f"{c.name}_mean", f"{c.name}_std", f"{c.name}_n"]
    return head + ["source"]


def _csv_cells(row: Row, column: Column) -> List[str]:
    """The CSV fields of one cell (numbers unrounded, so the file is for machines)."""
    value = row.cells.get(column.name)
    if column.kind == "text":
        return ["" if value is None else str(value)]
    if isinstance(value, Stat):
        return [repr(value.mean), repr(value.std), str(value.n)]
    return ["" if value is None else repr(float(value)), "", ""]


def to_csv(table: Table) -> str:
    """One header line, one line per row; paper rows have empty std and n."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(csv_header(table))
    for row in table.rows:
        fields: List[str] = []
        for column in table.columns:
            fields += _csv_cells(row, column)
        writer.writerow(fields + [row.source])
    return buf.getvalue()


# --- LaTeX ------------------------------------------------------------------------------

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "α": r"$\alpha$", "β": r"$\beta$", "γ": r"$\gamma$",
                  "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (and write Greek letters in math mode)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_cell(value: Any) -> str:
    if isinstance(value, Stat):
        if value.n == 1:
            return f"{value.mean:.1f} (n=1)"
        return f"${value.mean:.1f} \\pm {value.std:.1f}$ (n={value.n})"
    return latex_escape(cell_text(value))


def to_latex(table: Table) -> str:
    """A ``table`` float with a plain ``tabular`` (no packages beyond LaTeX itself)."""
    spec = "".join("l" if c.kind == "text" else "r" for c in table.columns)
    lines = [r"\begin{table}[ht]", r"\centering", f"\\caption{{{latex_escape(table.title)}}}",
             f"\\label{{tab:{table.name}}}", f"\\begin{{tabular}}{{{spec}}}", r"\hline",
             " & ".join(latex_escape(c.label) for c in table.columns) + r" \\", r"\hline"]
    for row in table.rows:
        lines.append(" & ".join(_latex_cell(row.cells.get(c.name)) for c in table.columns) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    lines += [f"% {note}" for note in table.notes]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def render_all(tables: Sequence[Table]) -> Dict[str, str]:
    """``tables/<name>.<ext>`` -> text for every table and format."""
    out: Dict[str, str] = {}
    for t in tables:
        out[f"{t.name}.md"] = to_markdown(t)
        out[f"{t.name}.csv"] = to_csv(t)
        out[f"{t.name}.tex"] = to_latex(t)
    return out


def find(tables: Sequence[Table], name: str) -> Optional[Table]:
    """The table called ``name``, if written."""
    return next((t for t in tables if t.name == name), None)
