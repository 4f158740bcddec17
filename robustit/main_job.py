"""The main job on the embedded default (``dev/main``): the ``quick`` bench spec, then its report.

    robustit bench --spec quick --out WORK/bench/quick --jobs N   (world, poison, tune, evaluate)
    robustit report --results WORK/bench/quick --out WORK/bench/quick/report

Every cell is skipped when its record exists and training resumes from its last saved step, so a
killed job picks up where it stopped. It ends by printing the main table and the path of the
HTML report.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List

from .cli import main as cli


def parse_args(argv: List[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="dev/main", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="work", help="folder for everything the job writes (default: work)")
    ap.add_argument("--spec", default="quick",
                    help="bench spec: a shipped name (quick, paper, ablation, sweep) or a file (default: quick)")
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                    help="training runs at a time, one process and one torch thread each "
                         "(default: the CPU count, at most 4)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    work = Path(args.work)
    name = Path(args.spec).stem
    out = work / "bench" / name
    extra = ["--jobs", str(args.jobs)] + (["--quiet"] if args.quiet else [])
    rc = cli(["bench", "--spec", args.spec, "--out", str(out), "--world", str(work / "world"), *extra])
    if rc != 0:
        return rc
    activations = activation_picture(args.spec, out, work / "world")
    return cli(["report", "--results", str(out), "--out", str(out / "report"),
                *(["--activations", str(activations)] if activations else [])])


def activation_picture(spec_name: str, out: Path, world: Path) -> Path | None:
    """`robustit activations` for the clean VanillaIT run and the first attack's VanillaIT and
    RobustIT runs (the paper's Figure 9); None when the grid has no such runs."""
    from .bench.spec import load_spec, poison_id, run_id

    spec = load_spec(spec_name)
    seed = spec.seeds[0]
    attack = next((a for a in spec.attacks if a != "none"), None)
    if attack is None or "none" not in spec.attacks:
        return None
    poisoned = {"attack": attack, "rate": float(spec.rates[0]), "text_trigger_mode": spec.text_trigger_modes[0],
                "seed": seed}
    runs = [("clean, VanillaIT", {"attack": "none", "rate": 0.0, "text_trigger_mode": "paper", "seed": seed,
                                  "method": "vanilla", "params": {}}),
            (f"{attack}, VanillaIT", {**poisoned, "method": "vanilla", "params": {}}),
            (f"{attack}, RobustIT", {**poisoned, "method": "robustit", "params": {"components": "both"}})]
    found = [(label, out / "work" / "runs" / run_id(key)) for label, key in runs]
    found = [(label, path) for label, path in found if (path / "checkpoint").is_dir()]
    if len(found) < 2:
        return None
    target = out / "activations.json"
    manifest = out / "work" / "poisoned" / f"{poison_id(poisoned)}-s{seed}" / "manifest.json"
    argv = ["activations", "--model", spec.model, "--data", str(spec.data or world), "--split",
            spec.test_sets[0], "--manifest", str(manifest), "--out", str(target), "--threads", "1"]
    for label, path in found:
        argv += ["--tuned", str(path), "--label", label]
    return target if target.exists() or cli(argv) == 0 else None


def main(argv: List[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
