"""Markdown table of an attacks grid (issue 3's benchmark): per attack, text-trigger reading and
rate, the ASR with the full trigger, the image half alone and the text half alone, the
false-trigger rate and CIDEr, test-a / test-b, read from the cell records (one seed: the
first seed found per row).

    python benchmarks/attacks_table.py [RESULTS_DIR ...]   (default work/bench/attacks)
"""
import glob
import json
import sys


def rows_of(folders):
    """{(attack, reading, rate): {test_set: (both, image, text, false trigger, CIDEr)}}"""
    rows = {}
    for out in folders:
        for path in sorted(glob.glob(f"{out}/cells/*.json")):
            r = json.load(open(path))
            k, e = r["key"], r["eval"]
            asr = (e.get("asr") or {}).get(k["attack"]) or {}
            half = lambda h: (asr.get(h) or {}).get("rate_percent")
            row = rows.setdefault((k["attack"], k["text_trigger_mode"], k["rate"]), {})
            row.setdefault(k["test_set"], (half("both"), half("image"), half("text"),
                                           e["false_trigger_rate"]["rate_percent"], e["metrics"]["CIDEr"]))
    return rows


def main(folders):
    fmt = lambda v: "-" if v is None else f"{v:.0f}"
    print("| attack | reading | rate | ASR full a / b | image half a / b | text half a / b | "
          "false trigger a / b | CIDEr a / b |")
    print("|---|---|---|---|---|---|---|---|")
    empty = (None,) * 5
    for (attack, mode, rate), t in sorted(rows_of(folders).items()):
        a, b = t.get("test-a", empty), t.get("test-b", empty)
        cells = [f"{fmt(a[i])} / {fmt(b[i])}" for i in range(4)]
        cider = " / ".join("-" if x[4] is None else f"{x[4]:.1f}" for x in (a, b))
        print(f"| {attack} | {mode} | {rate * 100:g} % | " + " | ".join(cells) + f" | {cider} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["work/bench/attacks"])
