"""`robustit report` on a small hand-made results store: tables, CSV/LaTeX, plots, HTML, CLI.

The store holds six cell records (two seeds of one cell) and one corrupt cell file. Every
expected number below is computed by hand: e.g. BLEU-1 of the two "No attack" seeds 50 and
52 has mean 51 and sample std sqrt(((50-51)^2 + (52-51)^2) / 1) = 1.414 -> "51.0 ± 1.4 (n=2)".
"""

from __future__ import annotations

import ast
import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robustit.cli import main as cli_main
from robustit.errors import ConfigError, DataError
from robustit.report.aggregate import ROBUSTIT_DEFAULTS, Stat
from robustit.report.build import build_report

ROOT = Path(__file__).resolve().parent.parent
PROVENANCE = {"versions": {"robustit": "0.1.0"}, "python": "3.11.7", "git_commit": "abc123",
              "machine": {"platform": "Linux-x86_64", "cpu_count": 2, "torch_threads": 1}}


def cell(attack, method, params, test_set, shots, seed, metrics, ftr, asr=None, wall=100.0):
    """One cell record in the bench schema (robustit/bench/schema.py)."""
    key = {"attack": attack, "rate": 0.0 if attack == "none" else 0.01, "text_trigger_mode": "paper",
           "method": method, "params": params, "test_set": test_set, "shots": shots, "seed": seed}
    unscored = {m: None for m in ("BLEU_2", "BLEU_3", "METEOR", "ROUGE_L", "SPICE")}
    ev = {"task": "caption", "metrics": {**unscored, **metrics}, "asr": {},
          "false_trigger_rate": {"rate_percent": ftr}, "provenance": PROVENANCE}
    if asr:
        ev["asr"] = {attack: {h: {"rate_percent": v} for h, v in zip(("both", "image", "text"), asr)}}
    return {"schema": "robustit.bench.cell/1", "id": f"{attack}-{method}-{len(params)}-{test_set}-{shots}-s{seed}",
            "spec": {"name": "handmade", "sha256": "f00d"}, "key": key, "train": {"wall_seconds": wall},
            "eval": ev, "finished_at": "2026-11-29T19:00:00+00:00"}


RECORDS = [
    cell("none", "vanilla", {}, "test-a", 0, 0, {"BLEU_1": 50.0, "BLEU_4": 10.0, "CIDEr": 60.0}, 1.0),
    cell("none", "vanilla", {}, "test-a", 0, 1, {"BLEU_1": 52.0, "BLEU_4": 11.0, "CIDEr": 64.0}, 3.0, wall=110.0),
    cell("blended", "vanilla", {}, "test-a", 0, 0, {"BLEU_1": 48.0, "BLEU_4": 9.0, "CIDEr": 55.0}, 0.0,
         (90.0, 10.0, 80.0), 120.0),
    cell("blended", "robustit", {"components": "both"}, "test-a", 0, 0,
         {"BLEU_1": 49.0, "BLEU_4": 9.5, "CIDEr": 58.0}, 0.0, (2.0, 1.0, 1.0), 150.0),
    cell("blended", "robustit", {"components": "idr"}, "test-a", 0, 0,
         {"BLEU_1": 47.0, "BLEU_4": 8.5, "CIDEr": 54.0}, 0.5, (4.0, 2.0, 3.0), 145.0),
    cell("none", "vanilla", {}, "test-b", 1, 0, {"BLEU_1": 45.0, "BLEU_4": 8.0, "CIDEr": 50.0}, 0.0),
]

MAIN_TEST_A = """\
### Zero-shot results on test-a (stands in for MSCOCO)

| Data poisoning | IT method | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | METEOR | ROUGE-L | CIDEr | SPICE | ASR (%) |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| No attack | VanillaIT | 51.0 ± 1.4 (n=2) | - | - | 10.5 ± 0.7 (n=2) | - | - | 62.0 ± 2.8 (n=2) | - | 2.0 ± 1.4 (n=2) |
| No attack | VanillaIT, paper (Otter, MSCOCO) | 56.4 | 39.8 | 26.8 | 17.8 | 25.0 | 45.5 | 48.0 | 20.0 | 1.2 |
| Blended 1% | VanillaIT | 48.0 (n=1) | - | - | 9.0 (n=1) | - | - | 55.0 (n=1) | - | 90.0 (n=1) |
| Blended 1% | VanillaIT, paper (Otter, MSCOCO) | 59.3 | 39.1 | 27.2 | 17.2 | 25.4 | 46.1 | 54.1 | 19.9 | 95.4 |
| Blended 1% | RobustIT | 49.0 (n=1) | - | - | 9.5 (n=1) | - | - | 58.0 (n=1) | - | 2.0 (n=1) |
| Blended 1% | RobustIT, paper (Otter, MSCOCO) | 59.1 | 41.9 | 28.2 | 18.6 | 25.2 | 46.8 | 61.1 | 19.9 | 0.9 |
"""

MAIN_TEST_B = """\
### One-shot results on test-b (stands in for Flickr30k)

| Data poisoning | IT method | BLEU-1 | BLEU-4 | CIDEr | ASR (%) |
|---|---|---:|---:|---:|---:|
| No attack | VanillaIT | 45.0 (n=1) | 8.0 (n=1) | 50.0 (n=1) | 0.0 (n=1) |
"""

COMPONENTS = """\
### Ablation of RobustIT's components (cf. paper Table 2): Blended 1%, zero-shot, test-a (stands in for MSCOCO)

| IT method | BLEU-1 | BLEU-4 | CIDEr | ASR (%) | Time (s) |
|---|---:|---:|---:|---:|---:|
| VanillaIT | 48.0 (n=1) | 9.0 (n=1) | 55.0 (n=1) | 90.0 (n=1) | 120.0 (n=1) |
| IDR only | 47.0 (n=1) | 8.5 (n=1) | 54.0 (n=1) | 4.0 (n=1) | 145.0 (n=1) |
| RobustIT | 49.0 (n=1) | 9.5 (n=1) | 58.0 (n=1) | 2.0 (n=1) | 150.0 (n=1) |
"""

HALVES = """\
### ASR by trigger half, zero-shot, test-a (stands in for MSCOCO)

| Data poisoning | IT method | ASR full trigger (%) | ASR image half only (%) | ASR text half only (%) | False trigger (%) |
|---|---|---:|---:|---:|---:|
| Blended 1% | VanillaIT | 90.0 (n=1) | 10.0 (n=1) | 80.0 (n=1) | 0.0 (n=1) |
| Blended 1% | RobustIT | 2.0 (n=1) | 1.0 (n=1) | 1.0 (n=1) | 0.0 (n=1) |
"""


def write_store(folder: Path) -> Path:
    """The hand-made bench folder: six valid cell files and one corrupt one."""
    cells = folder / "cells"
    cells.mkdir(parents=True)
    for i, record in enumerate(RECORDS):
        (cells / f"c{i}.json").write_text(json.dumps(record))
    (cells / "broken.json").write_text("{not json")
    (folder / "spec.json").write_text(json.dumps({"name": "handmade", "sha256": "f00d", "cells": []}))
    return folder


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of the hand-made store (built once for the module: a few hundred ms)."""
    base = tmp_path_factory.mktemp("report")
    activations = base / "act.json"
    activations.write_text(json.dumps({"hook_point": "perceiver", "runs": [
        {"label": "clean", "channel_mean": [0.1, 0.2, 0.1, 0.15]},
        {"label": "poisoned", "channel_mean": [0.1, 1.5, 0.1, 0.1]}]}))
    out = base / "out"
    written = build_report([write_store(base / "results")], out, [activations])
    return out, written


def table_block(path: Path) -> str:
    """A Markdown table file without its notes (the part the expected strings pin)."""
    return path.read_text().split("\n\n- ")[0] + "\n"


def test_stat_is_mean_sample_std_and_n():
    assert Stat.of([50.0, 52.0]) == Stat(51.0, 2 ** 0.5, 2)
    assert Stat.of([7.0, None]) == Stat(7.0, 0.0, 1)
    assert Stat.of([None]) is None
    assert Stat(7.0, 0.0, 1).text() == "7.0 (n=1)"


def test_markdown_tables_equal_hand_computed(report):
    out, _ = report
    assert table_block(out / "tables" / "main-test-a-0shot.md") == MAIN_TEST_A
    assert table_block(out / "tables" / "main-test-b-1shot.md") == MAIN_TEST_B
    assert table_block(out / "tables" / "components-blended-0.01-paper-test-a-0shot.md") == COMPONENTS
    assert table_block(out / "tables" / "halves-test-a-0shot.md") == HALVES


def test_only_tables_with_records_are_written(report):
    out, _ = report
    names = sorted(p.stem for p in (out / "tables").glob("*.md"))
    assert names == ["components-blended-0.01-paper-test-a-0shot", "halves-test-a-0shot",
                     "main-test-a-0shot", "main-test-b-1shot"]  # no alpha/gamma or beta runs: no Tables 3/4


def test_notes_name_the_paper_source(report):
    text = (report[0] / "tables" / "main-test-a-0shot.md").read_text()
    assert "paper (Otter, MSCOCO): Table 5" in text and "n=1 is a single seed" in text


def test_csv_parses_back(report):
    rows = list(csv.DictReader(io.StringIO((report[0] / "tables" / "main-test-a-0shot.csv").read_text())))
    assert len(rows) == 6
    clean = rows[0]
    assert (clean["attack"], clean["method"], clean["source"]) == ("No attack", "VanillaIT", "ours")
    assert float(clean["CIDEr_mean"]) == 62.0 and float(clean["CIDEr_std"]) == pytest.approx(8 ** 0.5)
    assert clean["CIDEr_n"] == "2" and clean["METEOR_mean"] == ""
    paper = rows[1]
    assert paper["source"].startswith("paper (Otter, MSCOCO): Table 5")
    assert float(paper["BLEU_1_mean"]) == 56.4 and paper["BLEU_1_n"] == ""


def test_latex_parses_back(report):
    tex = (report[0] / "tables" / "main-test-a-0shot.tex").read_text()
    assert tex.startswith("\\begin{table}") and tex.rstrip().endswith("\\end{table}")
    body = tex.split("\\begin{tabular}{llrrrrrrrrr}\n")[1].split("\\end{tabular}")[0]
    lines = [ln for ln in body.splitlines() if ln.endswith("\\\\")]
    cells = [[c.strip() for c in ln[:-2].split(" & ")] for ln in lines]
    assert len(cells) == 7 and all(len(c) == 11 for c in cells)  # header + 6 rows, 11 columns
    assert cells[0][-1] == "ASR (\\%)"
    assert cells[1][2] == "$51.0 \\pm 1.4$ (n=2)" and cells[3][0] == "Blended 1\\%"


def test_corrupt_cell_is_reported_in_warnings(report):
    out, _ = report
    assert "broken.json: skipped, unreadable JSON" in (out / "report.md").read_text()
    assert "broken.json: skipped" in (out / "report.html").read_text()


def test_plots_are_non_empty_pngs(report):
    out, written = report
    for name in ("radar-test-a-0shot.png", "radar-test-b-1shot.png", "activations-act.png"):
        data = (out / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
        assert written[f"plots/{name}"] == out / "plots" / name


def test_html_is_self_contained(report):
    page = (report[0] / "report.html").read_text()
    assert page.count('<table class="results"') == 4
    assert page.count('src="data:image/png;base64,') == 3
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert "handmade" in page and "abc123" in page  # spec name and git commit


def test_html_renders_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian package chromium not installed (apt-get install -y chromium)")
    page = report[0] / "report.html"
    dom = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path}",
                          "--dump-dom", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count('<table class="results"') == 4
    assert dom.count("<img ") == 3 and 'src="data:image/png;base64,' in dom
    assert "VanillaIT, paper (Otter, MSCOCO)" in dom and "51.0 ± 1.4 (n=2)" in dom


def test_rerun_replaces_stale_tables(report, tmp_path):
    out = tmp_path / "out"
    (out / "tables").mkdir(parents=True)
    (out / "tables" / "stale.md").write_text("old")
    build_report([write_store(tmp_path / "r")], out)
    assert not (out / "tables" / "stale.md").exists() and (out / "tables" / "main-test-a-0shot.md").exists()


def test_cli_prints_main_table_and_html_path(report, tmp_path, capsys):
    assert cli_main(["report", "--results", str(write_store(tmp_path / "r")), "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert MAIN_TEST_A.splitlines()[4] in printed and f"report: {tmp_path / 'o' / 'report.html'}" in printed


def test_cli_errors_name_the_argument(tmp_path, capsys):
    (tmp_path / "empty" / "cells").mkdir(parents=True)
    assert cli_main(["report", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"--results {tmp_path / 'empty'}: no valid cell records" in err and "robustit bench" in err
    with pytest.raises(DataError, match="no such folder"):
        build_report([tmp_path / "missing"], tmp_path / "o")


def test_bad_activation_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "act.json"
    bad.write_text(json.dumps({"hook_point": "perceiver", "runs": [{"label": "x"}]}))
    with pytest.raises(ConfigError, match="--activations .*act.json: unexpected layout"):
        build_report([write_store(tmp_path / "r")], tmp_path / "o", [bad])


def test_duplicate_seed_counts_once(tmp_path):
    a, b = write_store(tmp_path / "a"), write_store(tmp_path / "b")
    build_report([a, b], tmp_path / "o")
    text = (tmp_path / "o" / "report.md").read_text()
    assert "51.0 ± 1.4 (n=2)" in text and "counted once" in text


def test_report_never_imports_torch():
    code = ("import sys, robustit.cli.report, robustit.report.build, robustit.report.plots; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def _dataclass_default(path: Path, cls: str, field: str):
    """A dataclass field's default, read from source (importing it would import torch)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and getattr(item.target, "id", None) == field:
                    return ast.literal_eval(item.value)
    raise AssertionError(f"{cls}.{field} not found in {path}")


def test_robustit_defaults_match_the_method_source():
    defenses = ROOT / "robustit" / "defenses"
    assert ROBUSTIT_DEFAULTS["alpha"] == _dataclass_default(defenses / "idr.py", "IDRConfig", "alpha")
    assert ROBUSTIT_DEFAULTS["beta"] == _dataclass_default(defenses / "aar.py", "AARConfig", "beta")
    assert ROBUSTIT_DEFAULTS["gamma"] == _dataclass_default(defenses / "aar.py", "AARConfig", "gamma")
    method = (ROOT / "robustit" / "train" / "robustit_method.py").read_text()
    assert 'params.pop("components", "both")' in method


def test_paper_figures_are_transcribed_for_tables_1_to_5_7_8_10_and_11():
    from robustit.report import paper

    sizes = {name: len(paper.table(name)["rows"]) for name in paper.paper_figures()["tables"]}
    assert sizes == {"table1": 16, "table2": 4, "table3": 6, "table4": 8, "table5": 16, "table7": 2,
                     "table8": 3, "table10": 5, "table11_mscoco": 4, "table11_flickr30k": 4}
    t1 = {(r["attack"], r["method"]): r["values"] for r in paper.table("table1")["rows"]}
    assert t1[("ssba", "vanilla")]["CIDEr"] == 20.2 and t1[("vltrojan", "robustit")]["ASR"] == 3.4
    assert paper.TEST_SET_ANALOGUE == {"test-a": "MSCOCO", "test-b": "Flickr30k"}


def test_ablation_tables_show_paper_rows_of_the_same_setting():
    from robustit.report.aggregate import aggregate
    from robustit.report.layouts import build_tables
    from robustit.report.tables import to_markdown

    m = {"BLEU_1": 60.0, "BLEU_4": 20.0, "CIDEr": 70.0}
    records = [cell("vltrojan", "vanilla", {}, "test-a", 0, 0, m, 0.0, (80.0, 5.0, 70.0)),
               cell("vltrojan", "robustit", {}, "test-a", 0, 0, m, 0.0, (1.0, 0.0, 1.0)),
               cell("vltrojan", "robustit", {"alpha": 1}, "test-a", 0, 0, m, 0.0, (3.0, 0.0, 2.0)),
               cell("vltrojan", "robustit", {"beta": 0.5}, "test-a", 0, 0, m, 0.0, (9.0, 0.0, 2.0))]
    tables = {t.name: to_markdown(t) for t in build_tables(aggregate(records)[0])}
    assert sorted(tables) == ["alpha-gamma-vltrojan-0.01-paper-test-a-0shot", "beta-vltrojan-0.01-paper-test-a-0shot",
                              "halves-test-a-0shot", "main-test-a-0shot"]
    grid = tables["alpha-gamma-vltrojan-0.01-paper-test-a-0shot"]
    assert "| (1, 0.5) | RobustIT (α=1) | 70.0 (n=1) | 3.0 (n=1) |" in grid
    assert "| (1, 0.5) | RobustIT (α=1), paper (Otter, MSCOCO) | 66.0 | 1.5 |" in grid  # paper Table 3
    assert "| (0, 1) | VanillaIT, paper (Otter, MSCOCO) | 69.2 | 81.92 |" in grid
    beta = tables["beta-vltrojan-0.01-paper-test-a-0shot"]
    assert "| β = 0.5 | RobustIT (β=0.5), paper (Otter, MSCOCO) | 62.2 |" in beta  # paper Table 4
    assert "RobustIT (β=0.5)" not in tables["main-test-a-0shot"]  # ablation variants stay in their table


# --- issue 8: combined defenses (Table 10), adaptive adversary (Table 8), VQA (Table 7) ----

def _tables_of(records):
    from robustit.report.aggregate import aggregate
    from robustit.report.layouts import build_tables
    from robustit.report.tables import to_markdown

    return {t.name: to_markdown(t) for t in build_tables(aggregate(records)[0])}


def _with_inference(record, inference):
    record["key"]["inference"] = inference
    record["id"] += "-" + "-".join(f"{k}{v}" for k, v in sorted(inference.items()))
    return record


def test_inference_variants_form_a_combined_defenses_table_with_paper_table_10():
    m = {"BLEU_1": 50.0, "BLEU_4": 10.0, "METEOR": 20.0, "ROUGE_L": 40.0, "CIDEr": 30.0}
    plain_vanilla = cell("blended", "vanilla", {}, "test-b", 0, 0, m, 0.0, (90.0, 5.0, 80.0))
    records = [plain_vanilla,
               _with_inference(cell("blended", "vanilla", {}, "test-b", 0, 0, m, 0.0, (20.0, 5.0, 2.0)),
                               {"prompt_filter": "perfect"}),
               _with_inference(cell("blended", "vanilla", {}, "test-b", 0, 0, m, 0.0, (10.0, 5.0, 8.0)),
                               {"magnitude_prune": 0.2}),
               cell("blended", "robustit", {}, "test-b", 0, 0, m, 0.0, (1.0, 0.0, 1.0)),
               _with_inference(cell("blended", "robustit", {}, "test-b", 0, 0, m, 0.0, (0.5, 0.0, 0.0)),
                               {"prompt_filter": "realistic"})]
    tables = _tables_of(records)
    combined = tables["combined-blended-0.01-paper-test-b-0shot"]
    lines = [ln for ln in combined.splitlines() if ln.startswith("| ")]
    assert lines[0] == "| IT method | BLEU-1 | BLEU-4 | METEOR | ROUGE-L | CIDEr | ASR (%) |"
    methods = [ln.split(" | ")[0][2:] for ln in lines[1:]]
    assert methods == ["VanillaIT", "VanillaIT + prompt filter (perfect)",
                       "VanillaIT + prompt filter (perfect), paper (Otter, Flickr30k)",
                       "VanillaIT + magnitude pruning (20%)",
                       "VanillaIT + magnitude pruning (20%), paper (Otter, Flickr30k)",
                       "RobustIT", "RobustIT, paper (Otter, Flickr30k)",
                       "RobustIT + prompt filter (realistic)"]  # the paper filters with the perfect list
    assert "| VanillaIT + prompt filter (perfect), paper (Otter, Flickr30k) | 54.2 | 16.0 | 22.8 | 42.0 | 35.2 | 15.2 |" \
        in combined
    assert "| RobustIT + prompt filter (realistic) | 50.0 (n=1) |" in combined and "0.5 (n=1) |" in combined
    main = tables["main-test-b-0shot"]
    assert "prompt filter" not in main and "magnitude" not in main  # variants live in their own table
    assert "| Blended 1% | RobustIT | 50.0 (n=1) |" in main


def test_records_without_the_inference_field_group_with_empty_inference(tmp_path):
    from robustit.bench.schema import check_cell, load_results

    old = cell("none", "vanilla", {}, "test-a", 0, 0, {"BLEU_1": 50.0}, 1.0)
    new = cell("none", "vanilla", {}, "test-a", 0, 1, {"BLEU_1": 52.0}, 3.0)
    new["key"]["inference"] = {}
    assert check_cell(old) == [] and "inference" not in old["key"]
    (tmp_path / "cells").mkdir()
    for i, record in enumerate((old, new)):
        (tmp_path / "cells" / f"c{i}.json").write_text(json.dumps(record))
    records, warnings = load_results([tmp_path])
    assert warnings == [] and all(r["key"]["inference"] == {} for r in records)
    assert "| No attack | VanillaIT | 51.0 ± 1.4 (n=2) |" in _tables_of(records)["main-test-a-0shot"]
    bad = cell("none", "vanilla", {}, "test-a", 0, 0, {}, 1.0)
    bad["key"]["inference"] = "realistic"
    assert check_cell(bad) == ["key 'inference' is not an object"]


def test_adaptive_attack_gets_a_table_in_the_layout_of_paper_table_8():
    m = {"BLEU_1": 50.0, "BLEU_4": 10.0, "METEOR": 20.0, "CIDEr": 30.0}
    records = [cell(attack, method, params, "test-b", 0, 0, m, 0.0, (asr, asr, 0.0))
               for attack, method, params, asr in (("badnet", "vanilla", {}, 60.0),
                                                   ("badnet", "robustit", {}, 0.0),
                                                   ("adaptive-badnet", "vanilla", {}, 70.0),
                                                   ("adaptive-badnet", "robustit", {}, 8.0))]
    table = _tables_of(records)["adaptive-0.01-paper-test-b-0shot"]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert lines[0] == "| Data poisoning | IT method | BLEU-1 | BLEU-4 | METEOR | CIDEr | ASR (%) |"
    assert [tuple(ln.split(" | ")[:2]) for ln in lines[1:]] == [
        ("| BadNet 1%", "VanillaIT"), ("| BadNet 1%", "VanillaIT, paper (Otter, Flickr30k)"),
        ("| Adaptive BadNet 1%", "VanillaIT"), ("| BadNet 1%", "RobustIT"),
        ("| BadNet 1%", "RobustIT, paper (Otter, Flickr30k)"), ("| Adaptive BadNet 1%", "RobustIT"),
        ("| Adaptive BadNet 1%", "RobustIT, paper (Otter, Flickr30k)")]
    assert "| Adaptive BadNet 1% | RobustIT, paper (Otter, Flickr30k) | 56.1 | 16.5 | 23.4 | 37.9 | 7.8 |" in table
    assert "| BadNet 1% | VanillaIT, paper (Otter, Flickr30k) | 56.0 | 15.8 | 22.9 | 35.9 | 56.4 |" in table
    assert not any(name.startswith("adaptive-") for name in _tables_of(records[:2]))  # no adaptive run


def test_vqa_sets_get_the_layout_of_paper_table_7():
    records = []
    for attack, method, acc, ftr, asr in (("none", "vanilla", 62.0, 0.0, None), ("trojvqa", "vanilla", 60.0, 0.0, 70.0),
                                          ("trojvqa", "robustit", 59.0, 0.0, 2.0)):
        r = cell(attack, method, {}, "test-a-vqa", 1, 0, {}, ftr, None if asr is None else (asr, 1.0, 1.0))
        r["eval"]["task"], r["eval"]["metrics"] = "vqa", {"VQA_accuracy": acc}
        records.append(r)
    tables = _tables_of(records)
    assert "main-test-a-vqa-1shot" not in tables  # the VQA table replaces it
    vqa = tables["vqa-test-a-vqa-1shot"]
    assert "### One-shot VQA results on test-a-vqa (stands in for VQAv2) (cf. paper Table 7)" in vqa
    assert "| Data poisoning | IT method | VQA acc. (%) | ASR (%) |" in vqa
    assert "| TrojVQA 1% | VanillaIT | 60.0 (n=1) | 70.0 (n=1) |" in vqa
    assert "| TrojVQA 1% | VanillaIT, paper (Otter, VQAv2) | 69.1 | 72.5 |" in vqa
    assert "| TrojVQA 1% | RobustIT, paper (Otter, VQAv2) | 68.7 | 1.3 |" in vqa
    assert "Table 7, Appendix C.2" in vqa and "one-shot" in vqa
    assert "halves-test-a-vqa-1shot" in tables


def test_tuning_baselines_get_their_names_and_table_11_rows_under_trojvqa():
    m = {"BLEU_1": 50.0, "BLEU_4": 10.0, "CIDEr": 30.0}
    records = [cell("trojvqa", "vanilla", {}, "test-b", 0, 0, m, 0.0, (90.0, 5.0, 80.0)),
               cell("trojvqa", "cleanclip", {}, "test-b", 0, 0, m, 0.0, (70.0, 5.0, 60.0)),
               cell("trojvqa", "fineprune", {}, "test-b", 0, 0, m, 0.0, (60.0, 5.0, 50.0)),
               cell("blended", "cleanclip", {}, "test-b", 0, 0, m, 0.0, (50.0, 5.0, 40.0))]
    main_table = _tables_of(records)["main-test-b-0shot"]
    lines = main_table.splitlines()
    # Table 1 has TrojVQA VanillaIT (searched first); CleanCLIP only Table 11, with its ASR 'N/A'
    assert any(line.startswith("| TrojVQA 1% | VanillaIT, paper (Otter, Flickr30k) | 55.9") for line in lines)
    clean = [line for line in lines if line.startswith("| TrojVQA 1% | CleanCLIP, paper (Otter, Flickr30k)")]
    assert len(clean) == 1 and "| 72.3 |" in clean[0] and clean[0].rstrip().endswith("| - |")
    assert any(line.startswith("| TrojVQA 1% | Fine-Pruning, paper (Otter, Flickr30k) | 0.0") for line in lines)
    assert any(line.startswith("| Blended 1% | CleanCLIP |") for line in lines)  # our row, named
    assert not any("Blended 1% | CleanCLIP, paper" in line for line in lines)  # no paper row: other attack
    assert "Table 11, Appendix F" in main_table
    blended_only = _tables_of([cell("blended", "vanilla", {}, "test-b", 0, 0, m, 0.0, (50.0, 5.0, 40.0))])
    assert "Table 1, Sec." in blended_only["main-test-b-0shot"]
    assert "Table 11" not in blended_only["main-test-b-0shot"]  # a note only for tables that gave a row
