"""Time each caption scorer on synthetic data: ``python benchmarks/bench_scorers.py [--n 5000]``.

Builds ``n`` candidates with 5 references each (seeded, caption-like sentences from a small
vocabulary), scores them with :func:`robustit.eval.caption_metrics.score_captions` and prints
seconds per stage (PTB tokenizer, BLEU, METEOR incl. its JVM start, ROUGE-L, CIDEr, SPICE or
null) with the machine's core count. SPICE runs only when ``--spice-jars`` or
``$ROBUSTIT_SPICE_JARS`` points to the CoreNLP 3.6.0 jars.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from robustit.eval.caption_metrics import score_captions  # noqa: E402

SUBJECTS = ["a dog", "two cats", "a man", "a woman", "a child", "a red bus", "a brown horse",
            "three birds", "a young boy", "an old car", "a group of people", "a small plane"]
VERBS = ["sitting on", "running across", "standing next to", "parked near", "flying over",
         "walking along", "lying on", "looking at", "playing in", "riding"]
PLACES = ["the grass", "a wooden table", "the street", "a sandy beach", "the snow", "a river",
          "a green field", "the kitchen", "a busy road", "the park"]
EXTRAS = ["", "", " on a sunny day", " at night", " with a ball", " in the rain"]


def _sentence(rng: random.Random) -> str:
    text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)}{rng.choice(EXTRAS)}"
    return text[0].upper() + text[1:] + rng.choice([".", "", " ."])


def synthetic_set(n: int, refs_per_item: int = 5, seed: int = 0) -> tuple[dict, dict]:
    """``n`` candidate captions and ``refs_per_item`` references each, reproducible by seed."""
    rng = random.Random(seed)
    candidates = {str(i): _sentence(rng) for i in range(n)}
    references = {str(i): [_sentence(rng) for _ in range(refs_per_item)] for i in range(n)}
    return candidates, references


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="number of candidates (default 5000)")
    parser.add_argument("--refs", type=int, default=5, help="references per candidate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spice-jars", default=None, help="folder with the CoreNLP 3.6.0 jars")
    args = parser.parse_args(argv)
    candidates, references = synthetic_set(args.n, args.refs, args.seed)
    start = time.perf_counter()
    scores = score_captions(candidates, references, spice_jars=args.spice_jars)
    total = time.perf_counter() - start
    report = {"n": scores.n, "refs_per_item": args.refs, "cpu_count": os.cpu_count(),
              "seconds": {k: round(v, 2) for k, v in scores.seconds.items()},
              "total_seconds": round(total, 2), "metrics": scores.metrics, "notes": scores.notes}
    if report["metrics"].get("SPICE") is None:
        report["seconds"]["SPICE"] = None  # not run: no time to report
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
