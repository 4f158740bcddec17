"""The audit's detection benchmark (issue 16): poison the first N training samples of the
embedded world with each attack x rate x reading x target kind x seed, screen each poisoned set
with the frozen shipped base (the same screen as `robustit audit`), and score the screen against
the manifest: precision, recall, F1, FPR, AUROC, TPR at 1 % FPR, and the share of a clean (0 %)
control that is flagged. Poisoned sets are made by `robustit poison` and kept (a rerun reuses
them); results go to OUT/audit-grid.json with the configuration, versions and commit.

    python benchmarks/audit_grid.py --world work/world --out work/audit-grid \
        [--attacks badnet,blended,...] [--rates 0.01,0.05,0.1] [--seeds 0] [--threads 1]

Target kinds: ``fixed`` (the paper's "The image depicts a photo of the banana."), ``inworld``
(one caption the world itself says, of another scene: "There is a pair of black diamonds."),
``inworld-pool`` (each poisoned sample draws one of five such captions: the first five captions
of the world's val split), ``pool`` (the shipped paraphrase pool of the paper's target),
``inject`` (the correct caption plus "Buy bananas."), ``label`` (every "circle" becomes
"banana") and ``label-inworld`` (every "circle" becomes "square": a plausible wrong label in the
world's own words, the hardest for a screen). Readings: ``paper`` (image + text trigger) and
``image-only``. By default: every attack at 1, 5 and 10 % with the fixed target in the paper's
reading and the in-world target with the picture alone, plus at 5 % the in-world pool (picture
alone) and the pool, inject, label and label-inworld targets (paper's reading).
"""
from __future__ import annotations

import argparse
import sys
import time
import json
from pathlib import Path

ATTACKS = ["badnet", "blended", "sig", "ssba", "ftrojan", "trojvqa", "vltrojan"]
INWORLD = "There is a pair of black diamonds."
#: robustit poison options of each target kind (inworld-pool: a file written from the world)
TARGETS = {"fixed": [], "inworld": ["--target", INWORLD], "pool": ["--target-pool", "banana"],
           "inject": ["--response-mode", "inject"], "label": ["--response-mode", "label"],
           "label-inworld": ["--response-mode", "label", "--label-target", "square"]}
POOL_SIZE = 5  # the pool: the first five captions of the world's val split (scenes not trained on)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="work/world", help="embedded world data root (default work/world)")
    ap.add_argument("--out", default="work/audit-grid", help="output folder (default work/audit-grid)")
    ap.add_argument("--train-size", type=int, default=2000, help="first N training samples (default 2000)")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated attacks (default: all seven)")
    ap.add_argument("--rates", default="0.01,0.05,0.1", help="comma-separated rates (default 0.01,0.05,0.1)")
    ap.add_argument("--seeds", default="0", help="comma-separated poisoning seeds (default 0)")
    ap.add_argument("--settings", default="paper:fixed,image-only:inworld",
                    help="comma-separated READING:TARGET pairs crossed with every rate "
                         "(default paper:fixed,image-only:inworld)")
    ap.add_argument("--extra", default="image-only:inworld-pool,paper:pool,paper:inject,paper:label,paper:label-inworld",
                    help="READING:TARGET pairs run at 5 %% only, per attack and seed (default: the in-world "
                         "pool with the picture alone, and the varied targets in the paper's reading; '' for none)")
    ap.add_argument("--also-thresholds", default="4,5",
                    help="comma-separated further thresholds scored from the same screen (recorded under "
                         "'at_threshold'; default 4,5)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--table", action="store_true",
                    help="print the Markdown table of OUT/audit-grid.json and exit (no poisoning, no screening)")
    return ap.parse_args(argv)


def cells(args):
    settings = [tuple(s.split(":")) for s in args.settings.split(",") if s]
    for seed in [int(s) for s in args.seeds.split(",")]:
        yield {"attack": "none", "rate": 0.0, "reading": "-", "target": "-", "seed": seed}
        for attack in args.attacks.split(","):
            for rate in [float(r) for r in args.rates.split(",")]:
                for reading, target in settings:
                    yield {"attack": attack, "rate": rate, "reading": reading, "target": target, "seed": seed}
            for reading, target in [tuple(x.split(":")) for x in args.extra.split(",") if x]:
                yield {"attack": attack, "rate": 0.05, "reading": reading, "target": target, "seed": seed}


def cell_name(c):
    return f"{c['attack']}-{c['rate']:g}-{c['reading']}-{c['target']}-s{c['seed']}"


def write_pool(world: Path, out: Path) -> Path:
    from robustit.data.mimicit import load_split

    val = load_split(world / "val", "val")
    pool = [s.answer for s in val.samples if s.task == "caption"][:POOL_SIZE]
    path = out / "inworld-pool.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(pool) + "\n")
    return path


def poison(c, clean: Path, out: Path) -> Path:
    from robustit.cli import main as cli

    folder = out / "poisoned" / cell_name(c)
    if (folder / "manifest.json").exists():
        return folder
    target = TARGETS[c["target"]] if c["target"] in TARGETS else ["--target-pool", str(out / "inworld-pool.txt")]
    rc = cli(["poison", "--data", str(clean.parent), "--split", "train", "--attack", c["attack"],
              "--rate", str(c["rate"]), "--seed", str(c["seed"]), "--text-trigger-mode", c["reading"],
              "--model", "embedded", "--cache", str(out / "cache"), "--out", str(folder), "--quiet", *target])
    if rc != 0:
        sys.exit(f"poisoning {cell_name(c)} failed (exit {rc})")
    return folder


HEADER = ("| attack | rate | reading | target | seed | precision | recall | F1 | FPR | AUROC | TPR@1%FPR | s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None):
    args = parse(argv)
    if args.table:
        print(HEADER)
        for r in json.loads((Path(args.out) / "audit-grid.json").read_text())["cells"]:
            print(row(r))
        return
    import torch

    torch.set_num_threads(args.threads)
    from robustit.bench.runner import _write_head
    from robustit.data.mimicit import load_split
    from robustit.defenses.screening.config import ScreenConfig
    from robustit.defenses.screening.screen import screen_dataset
    from robustit.eval.detection import detection_metrics, poisoned_ids
    from robustit.config import config_to_dict
    from robustit.io import atomic_write_json, provenance
    from robustit.models.factory import load_base

    out = Path(args.out)
    clean = out / "data" / f"train-first{args.train_size}" / "train"
    if not (clean / "train_instructions.json").exists():
        _write_head(Path(args.world), "train", args.train_size, clean)
    write_pool(Path(args.world), out)
    model, info = load_base("embedded")
    cfg = ScreenConfig()
    results = []
    store = out / "audit-grid.json"
    for c in cells(args):
        folder = clean if c["attack"] == "none" else poison(c, clean, out)
        data = load_split(folder, "train")
        t0 = time.perf_counter()
        r = screen_dataset(model, data, cfg, progress=False)
        seconds = time.perf_counter() - t0
        truth = set() if c["attack"] == "none" else poisoned_ids(folder / "manifest.json")
        m = detection_metrics(r.ids, r.score, r.flagged, truth)
        others = {t: detection_metrics(r.ids, r.score, r.score > float(t), truth)
                  for t in args.also_thresholds.split(",") if t}
        results.append({**c, **m, "seconds": round(seconds, 2), "trigger_ngrams": list(r.trigger_ngrams),
                        "at_threshold": others})
        print(row(results[-1]), flush=True)
        atomic_write_json(store, {"config": {**vars(args), "screen": config_to_dict(cfg)}, "base": info.to_dict(),
                                  "provenance": provenance(), "cells": results})
    print(f"\n{len(results)} cells -> {store}")


def row(r):
    f = lambda k: "-" if r.get(k) is None else f"{r[k]:g}"
    return (f"| {r['attack']} | {r['rate'] * 100:g} % | {r['reading']} | {r['target']} | s{r['seed']} | "
            f"{f('precision')} | {f('recall')} | {f('f1')} | {f('fpr')} | {f('auroc')} | {f('tpr_at_1pct_fpr')} | "
            f"{r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
