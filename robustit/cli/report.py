"""`robustit report`: tables (Markdown, CSV, LaTeX), plots and one HTML page from bench results."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("report", help="tables, plots and an HTML page from `robustit bench` results",
                       description="Read the cell records of one or more `robustit bench` output "
                                   "folders, average every figure over seeds (mean ± sample std, n) "
                                   "and write OUT/report.md, OUT/tables/*.{md,csv,tex}, "
                                   "OUT/plots/*.png and OUT/report.html (self-contained). The "
                                   "paper's numbers are shown beside ours where the paper has the "
                                   "same row. Reads results only; needs no model and no GPU.")
    p.add_argument("--results", required=True, nargs="+", metavar="DIR",
                   help="bench output folder(s) (the --out of `robustit bench`, holding cells/*.json "
                        "or results.jsonl); cells of all folders are pooled, a seed given twice counts once")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="report folder to write (its tables/ and plots/ subfolders are replaced)")
    p.add_argument("--activations", nargs="+", default=[], metavar="JSON",
                   help="per-channel activation file(s) {\"hook_point\", \"runs\": [{\"label\", "
                        "\"channel_mean\"}]} to plot like the paper's Figure 9 (optional)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..report.build import build_report

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder; give a folder path for the report")
    written = build_report(args.results, out, args.activations)
    for name in sorted(written):
        if name.startswith("tables/main-") and name.endswith(".md"):
            print(written[name].read_text())
    print(f"tables: {len([n for n in written if n.startswith('tables/')])} files in {out / 'tables'}")
    print(f"plots: {len([n for n in written if n.startswith('plots/')])} files in {out / 'plots'}")
    print(f"report: {written['report.html']}")
    return 0
