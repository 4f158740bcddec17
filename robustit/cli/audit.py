"""`robustit audit`: score every sample of an instruction set for backdoor suspicion.

Never reads a manifest to score: ``--manifest`` is read only after every score is computed, to
report precision / recall against it (evaluation).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_data_args, add_model_args, add_threads_arg, data_options, open_split, set_threads


def register(sub) -> None:
    from ..defenses.screening.config import SIGNALS, ScreenConfig

    d = ScreenConfig()
    p = sub.add_parser("audit", help="find suspect (poisoned) samples in an instruction set",
                       description="Score every sample of --data for backdoor suspicion under the "
                                   "frozen base model, without knowing the attack: how unlikely its "
                                   "response is, its most surprising tokens, responses repeated over "
                                   "images they are not grounded in, instruction n-grams after which one "
                                   "response word is near-certain, and instruction n-grams that the "
                                   "suspects share. Writes OUT/audit.json "
                                   "(every sample's signals, score and decision; the configuration, "
                                   "versions and commit) and OUT/audit.html (top suspects, histograms). "
                                   "See docs/audit.md.")
    add_data_args(p, formats=True)
    add_model_args(p, tuned=False)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for audit.json and audit.html")
    p.add_argument("--signals", default=",".join(d.signals), metavar="LIST",
                   help=f"comma-separated signals to compute and combine, from {', '.join(SIGNALS)} "
                        f"(default: {','.join(d.signals)}; docs/audit.md says what each catches)")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help=f"flag samples whose combined score (robust z) exceeds this (default {d.threshold:g}; "
                        f"lower flags more: more recall, more clean samples lost)")
    p.add_argument("--other-images", type=int, default=d.other_images, metavar="K",
                   help=f"other images each response is scored against for grounding (default {d.other_images})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"samples per forward pass (default {d.batch_size})")
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of other images (default 0)")
    p.add_argument("--manifest", default=None, metavar="FILE",
                   help="a poisoning manifest, for evaluation only: read after scoring, to print and "
                        "record precision, recall, F1, FPR, AUROC and TPR at 1%% FPR")
    p.add_argument("--top", type=int, default=40, help="suspects shown in audit.html (default 40)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads_arg(p)
    p.set_defaults(func=run)


def screen_config(args: argparse.Namespace):
    from ..config import check_range
    from ..defenses.screening.config import ScreenConfig

    check_range("--top", args.top, 0)
    signals = tuple(s.strip() for s in args.signals.split(",") if s.strip())
    return ScreenConfig(signals=signals, threshold=args.threshold, other_images=args.other_images,
                        batch_size=args.batch_size, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from ..defenses.screening.screen import screen_dataset
    from ..models.factory import load_base

    cfg = screen_config(args)  # bad options fail before any loading
    set_threads(args.threads)
    if args.manifest is not None and not Path(args.manifest).is_file():
        raise_missing(args.manifest)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        from ..errors import ConfigError

        raise ConfigError(f"--out {out} is a file; give a folder for audit.json and audit.html")
    dataset = open_split(args.data, args.split, skip_invalid=args.skip_invalid, **data_options(args))
    model, info = load_base(args.model)
    result = screen_dataset(model, dataset, cfg, progress=not args.quiet)
    record = audit_record(result, dataset, {**info.to_dict(), "identity": model.identity()})
    if args.manifest:  # the answer key, read only now that every score is fixed
        from ..eval.detection import detection_metrics, format_metrics, poisoned_ids

        record["detection"] = detection_metrics(result.ids, result.score, result.flagged,
                                                poisoned_ids(args.manifest))
        record["manifest"] = str(Path(args.manifest).resolve())
    write_audit(out, record, dataset, args.top)
    s = record["summary"]
    print(f"flagged {s['n_flagged']} of {s['n_samples']} samples ({100 * s['share_flagged']:.2f} %) "
          f"in {s['seconds']['total']:.1f} s")
    if s["trigger_ngrams"]:
        print("instruction n-grams the suspects share: " + "; ".join(f"'{g}'" for g in s["trigger_ngrams"]))
    if "detection" in record:
        print("\n".join(format_metrics(record["detection"])))
    print(f"audit: {out / 'audit.json'}, {out / 'audit.html'}")
    return 0


def audit_record(result, dataset, base_info: dict) -> dict:
    """audit.json's content: summary (config, counts, timings), the data and base identities,
    provenance, and one row per sample."""
    from ..io import provenance

    return {"summary": result.summary(), "seed": result.cfg.seed, "base": base_info,
            "data": {"name": dataset.name, "n_samples": len(dataset), "location": dataset.meta.get("location")},
            "provenance": provenance(), "samples": result.rows()}


def write_audit(out: Path, record: dict, dataset, top: int) -> None:
    """audit.json and audit.html, each written atomically (a killed run leaves the old ones)."""
    from ..io import atomic_write_json, atomic_write_text
    from ..report.audit_page import audit_page

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "audit.json", record)
    shown = sorted(record["samples"], key=lambda r: -r["score"])[:top]
    by_id = dataset.by_id()
    samples = {r["id"]: {"instruction": by_id[r["id"]].instruction, "answer": by_id[r["id"]].answer,
                         "image_ids": by_id[r["id"]].image_ids} for r in shown}
    images = {s["image_ids"][0]: dataset.images.get(s["image_ids"][0]) for s in samples.values() if s["image_ids"]}
    atomic_write_text(out / "audit.html", audit_page(record["summary"], record["samples"], samples, images,
                                                     top=top, detection=record.get("detection")))


def raise_missing(path: str) -> None:
    from ..errors import DataError

    raise DataError(f"--manifest {path}: no such file; pass the manifest.json that `robustit poison` wrote")
