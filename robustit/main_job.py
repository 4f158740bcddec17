"""The main job on the embedded default (``dev/main``).

    world -> poison(train) -> tune (vanilla, robustit) -> eval (test-a, test-b) -> table

Each step is a CLI verb run in this process and is skipped when its output exists (training
resumes from its last saved step), so a killed job picks up where it stopped. Everything lands
under ``--work`` (default ``./work``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List

from .cli import main as cli

TEST_SETS = ("test-a", "test-b")


def parse_args(argv: List[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="dev/main", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="work", help="folder for everything the job writes")
    ap.add_argument("--model", default="embedded", help="base model (default: the shipped one)")
    ap.add_argument("--attacks", default="blended,badnet", help="comma-separated attacks ('' for none)")
    ap.add_argument("--rate", type=float, default=0.01, help="poisoning rate (paper: 0.01)")
    ap.add_argument("--methods", default="vanilla,robustit", help="comma-separated tuning methods")
    ap.add_argument("--epochs", type=float, default=None, help="override the preset's epochs")
    ap.add_argument("--n-test", type=int, default=200, help="test samples per test set (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed for poisoning and tuning")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return ap.parse_args(argv)


def step(label: str, done: bool, argv: List[str]) -> None:
    if done:
        print(f"[skip] {label}: already done")
        return
    print(f"[run ] {label}")
    t0 = time.perf_counter()
    rc = cli(argv)
    if rc != 0:
        raise SystemExit(f"step failed: {label} (exit {rc})")
    print(f"[done] {label} in {time.perf_counter() - t0:.0f} s")


def run(args: argparse.Namespace) -> Path:
    work = Path(args.work)
    world = work / "world"
    threads = ["--threads", str(args.threads)] if args.threads else []
    step("build the scene world", (world / "world.json").exists(),
         ["data", "build", "--out", str(world), "--quiet"])
    attacks = [a for a in args.attacks.split(",") if a]
    datasets = {"none": (str(world), None)}
    for attack in attacks:
        out = work / "poisoned" / f"{attack}-{args.rate:g}-s{args.seed}"
        step(f"poison train with {attack} at {args.rate:.1%}", (out / "manifest.json").exists(),
             ["poison", "--data", str(world), "--split", "train", "--attack", attack, "--rate",
              str(args.rate), "--seed", str(args.seed), "--out", str(out), "--model", args.model])
        datasets[attack] = (str(out), str(out / "manifest.json"))
    results = []
    for attack, (data, manifest) in datasets.items():
        for method in args.methods.split(","):
            run_dir = work / "runs" / f"{attack}-{method}-s{args.seed}"
            train_argv = ["train", "--data", data, "--split", "train", "--method", method, "--out",
                          str(run_dir), "--model", args.model, "--seed", str(args.seed), *threads]
            if args.epochs:
                train_argv += ["--epochs", str(args.epochs)]
            step(f"tune {method} on {attack}", (run_dir / "checkpoint" / "tuned.json").exists(), train_argv)
            for test in TEST_SETS:
                res = run_dir / f"eval-{test}.json"
                eval_argv = ["eval", "--model", args.model, "--tuned", str(run_dir), "--data", str(world),
                             "--split", test, "--out", str(res), "--n", str(args.n_test), *threads]
                if manifest:
                    eval_argv += ["--manifest", manifest]
                step(f"evaluate {method}/{attack} on {test}", res.exists(), eval_argv)
                results.append((attack, method, test, json.loads(res.read_text())))
    table = render_table(results)
    (work / "main-table.md").write_text(table + "\n")
    print(table)
    return work / "main-table.md"


def render_table(results) -> str:
    head = ("| poisoning | method | test set | BLEU_4 | METEOR | ROUGE_L | CIDEr | false trigger % "
            "| ASR % (full) | ASR % (image only) | ASR % (text only) |")
    lines = [head, "|" + "---|" * 11]
    for attack, method, test, r in results:
        m = r["metrics"]
        asr = next(iter(r["asr"].values()), {}) if r["asr"] else {}
        cells = [attack, method, test] + [_num(m.get(k)) for k in ("BLEU_4", "METEOR", "ROUGE_L", "CIDEr")]
        cells.append(_num(r["false_trigger_rate"]["rate_percent"]))
        cells += [_num((asr.get(h) or {}).get("rate_percent")) for h in ("both", "image", "text")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def main(argv: List[str] | None = None) -> int:
    path = run(parse_args(argv))
    print(f"table: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
