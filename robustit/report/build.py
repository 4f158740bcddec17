"""``build_report``: results folders in, ``report.md``, ``tables/``, ``plots/``, ``report.html`` out.

Reads only the results store (``robustit.bench.schema``); never imports torch. Every file is
written atomically, and ``tables/`` and ``plots/`` are replaced as whole folders, so a rerun
with fewer results leaves no stale table behind and a crash leaves the previous report intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ..bench.schema import load_results
from ..errors import DataError
from ..io import atomic_path, atomic_write_text
from . import html, paper
from .aggregate import Group, aggregate
from .layouts import build_tables
from .plots import activation_plots, load_activations, radar_plots
from .runinfo import config_rows, spec_files
from .tables import Table, render_all, to_markdown

TITLE = "robustit report"


def load(results_dirs: Sequence[str | Path]) -> Tuple[List[Dict], List[str]]:
    """Records and warnings of every folder; a folder without one valid record is an error."""
    if not results_dirs:
        raise DataError("--results: give at least one bench output folder (the --out of `robustit bench`)")
    records, warnings = [], []
    for folder in map(Path, results_dirs):
        if not folder.is_dir():
            raise DataError(f"--results {folder}: no such folder; give the --out folder of `robustit bench`")
        found, notes = load_results([folder])
        if not found:
            why = f" ({len(notes)} problem(s): {notes[0]})" if notes else ""
            raise DataError(f"--results {folder}: no valid cell records{why}; give a folder that "
                            f"`robustit bench` has written cells/*.json or results.jsonl to")
        records += found
        warnings += notes
    return records, warnings


def intro(records: Sequence[Dict], groups: Sequence[Group], results_dirs: Sequence[str | Path]) -> str:
    """The paragraph under the title: what the numbers are and where the paper's come from."""
    analogues = ", ".join(f"{ours} stands in for {theirs}" for ours, theirs in paper.ANALOGUES.items())
    return (f"{len(records)} cell records in {len(groups)} groups from {', '.join(map(str, results_dirs))}. "
            f"Our numbers are mean ± sample std over seeds with n = the number of seeds; n=1 is one seed, "
            f"not a mean. Rows labelled 'paper (Otter, ...)' are the paper's own numbers "
            f"(robustit/report/paper_figures.json), shown beside our row of the same attack, method "
            f"and inference-time defenses, for the paper table's own shot count (zero-shot, one-shot "
            f"for VQA); {analogues}.")


def markdown_page(text_intro: str, tables: Sequence[Table], plots: Sequence[str], warnings: Sequence[str],
                  config: Sequence[Tuple[str, str]]) -> str:
    """``report.md``: intro, warnings, tables, plot links, configuration."""
    parts = [f"# {TITLE}\n\n{text_intro}\n", "## Warnings\n"]
    parts.append("".join(f"- {w}\n" for w in warnings) if warnings else "None: every cell file was read.\n")
    parts.append("## Tables\n")
    parts += [to_markdown(t) for t in tables]
    parts.append("## Plots\n")
    parts.append("".join(f"![{p}](plots/{p})\n\n" for p in plots) or "No plots.\n")
    parts.append("## Configuration\n\n| field | value |\n|---|---|\n"
                 + "".join(f"| {k} | {str(v).replace('|', '/')} |\n" for k, v in config))
    return "\n".join(parts)


def _write_folder(folder: Path, files: Dict[str, bytes | str]) -> Dict[str, Path]:
    """Replace ``folder`` by one holding exactly ``files`` (atomic rename of a whole folder)."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for name, content in files.items():
            target = tmp / name
            target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    return {f"{folder.name}/{name}": folder / name for name in files}


def build_report(results_dirs: Sequence[str | Path], out_dir: str | Path,
                 activation_jsons: Sequence[str | Path] = ()) -> Dict[str, Path]:
    """Write the report; returns ``{relative name: path}`` of every file written."""
    out = Path(out_dir)
    records, warnings = load(results_dirs)
    activations = load_activations(activation_jsons)  # a bad file stops us before any drawing
    groups, dup_warnings = aggregate(records)
    warnings = warnings + dup_warnings
    tables = build_tables(groups)
    plots = {**radar_plots(groups), **activation_plots(activations)}
    config, specs = config_rows(records), spec_files(results_dirs)
    text_intro = intro(records, groups, results_dirs)
    written = _write_folder(out / "tables", render_all(tables))
    written.update(_write_folder(out / "plots", plots))
    atomic_write_text(out / "report.md", markdown_page(text_intro, tables, list(plots), warnings, config))
    atomic_write_text(out / "report.html", html.page(TITLE, text_intro, tables, plots, warnings, config, specs))
    written.update({"report.md": out / "report.md", "report.html": out / "report.html"})
    return written
