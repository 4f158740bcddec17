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
    return cli(["report", "--results", str(out), "--out", str(out / "report")])


def main(argv: List[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
