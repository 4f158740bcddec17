"""``robustit bench``: run a grid of cells from a spec, resumably."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_threads_arg


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="run a grid of attack x method x test set x shot x seed cells from a spec",
        description="Expand a spec (YAML or JSON; or a shipped one by name: quick, paper, ablation, "
                    "sweep, ...) into cells, and run each cell's poison -> train -> eval, writing one "
                    "record per cell to OUT/cells/ and all of them to OUT/results.jsonl. Rerunning "
                    "skips finished cells and resumes unfinished ones (training resumes from its last "
                    "saved step), so a killed grid loses at most the work in flight.")
    p.add_argument("--spec", metavar="FILE|NAME",
                   help="spec file, or the name of a shipped spec (see --list-specs); required unless "
                        "--list-specs")
    p.add_argument("--out", metavar="DIR", help="output folder (required unless --list-specs / --dry-run)")
    p.add_argument("--world", default="work/world", metavar="DIR",
                   help="the embedded world's data root for specs without `data` (built there if "
                        "missing; default: work/world)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only slice I of N (1-based; whole training runs are dealt round-robin, "
                        "so N machines with I = 1..N cover the grid exactly once)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="training runs at a time, each in its own process with --threads torch threads "
                        "(default 1 thread per process when N > 1); on a CPU, N = the number of cores "
                        "beats one process with N threads (default: 1, in this process)")
    p.add_argument("--dry-run", action="store_true", help="print the cells (of this shard) and exit")
    p.add_argument("--list-specs", action="store_true",
                   help="print the shipped specs (name, cells, training runs, description) and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.runner import Bench
    from ..bench.spec import SHIPPED, cell_id, expand, load_spec, parse_shard, shard_keys
    from ..errors import ConfigError

    if args.list_specs:
        _list_specs(SHIPPED)
        return 0
    if not args.spec:
        raise ConfigError("--spec is required: a spec file or a shipped spec's name (--list-specs "
                          "prints them)")
    spec = load_spec(args.spec)
    shard = parse_shard(args.shard)
    if args.threads:
        spec.threads = args.threads
    if args.dry_run:
        for key in shard_keys(expand(spec), shard):
            print(cell_id(key))
        return 0
    if not args.out:
        raise ConfigError("--out is required: the folder the grid's results go to")
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: must be at least 1")
    bench = Bench(spec, Path(args.out), Path(args.world), quiet=args.quiet)
    if args.jobs == 1:
        records = bench.run(shard)
    else:
        from ..bench.parallel import run_parallel

        records = run_parallel(bench, args.jobs, shard)
    print(json.dumps({"spec": spec.name, "cells": len(records), "out": args.out}))
    return 0


def _list_specs(folder: Path) -> None:
    """One line per shipped spec: name, cells, training runs, description."""
    from ..bench.spec import expand, load_spec, run_id

    specs = [load_spec(str(path)) for path in sorted(folder.glob("*.yaml"))]
    width = max(len(s.name) for s in specs)
    print(f"{'name':{width}s}  cells  runs  description")
    for spec in specs:
        keys = expand(spec)
        runs = len({run_id(k) for k in keys})
        print(f"{spec.name:{width}s}  {len(keys):5d}  {runs:4d}  {' '.join((spec.description or '').split())}")
    print(f"(in {folder})")
