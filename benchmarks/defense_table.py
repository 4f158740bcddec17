"""Markdown table of a defense grid (the `guard` and `guard-varied` specs): per poisoning
(attack, rate, response mode) and method, ASR with the full trigger, the image half and the
text half, the false-trigger rate and CIDEr (test-a / test-b), and the training time (screening
included), read from the cell records (one seed: the first found per row).

    python benchmarks/defense_table.py [RESULTS_DIR ...]   (default work/bench/guard)
"""
import glob
import json
import sys

METHODS = {"vanilla": "VanillaIT", "robustit": "RobustIT", "guard": "guard", "byorn": "BYORn", "abl": "ABL"}


def response_tag(key):
    r = key.get("response") or {}
    if not r:
        return "fixed"
    if "target_pool" in r:
        return f"pool {r['target_pool']}"
    if r.get("mode") == "label":
        return f"label {r.get('source_word', 'circle')}->{r.get('target_word', 'banana')}"
    return r.get("mode", "?")


def rows_of(folders):
    rows = {}
    for out in folders:
        for path in sorted(glob.glob(f"{out}/cells/*.json")):
            r = json.load(open(path))
            k, e = r["key"], r["eval"]
            asr = (e.get("asr") or {}).get(k["attack"]) or {}
            half = lambda h: (asr.get(h) or {}).get("rate_percent")
            row = rows.setdefault((k["attack"], k["rate"], response_tag(k), k["method"]), {})
            row.setdefault(k["test_set"], (half("both"), half("image"), half("text"),
                                           e["false_trigger_rate"]["rate_percent"], e["metrics"]["CIDEr"],
                                           r["train"]["wall_seconds"]))
    return rows


def main(folders):
    fmt = lambda v: "-" if v is None else f"{v:.0f}"
    print("| poisoning | target | method | ASR full a / b | image half a / b | text half a / b | "
          "false trigger a / b | CIDEr a / b | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    empty = (None,) * 6
    order = list(METHODS)
    for (attack, rate, tag, method), t in sorted(rows_of(folders).items(),
                                                 key=lambda kv: (kv[0][0] != "none", kv[0][:3], order.index(kv[0][3])
                                                                 if kv[0][3] in order else 99)):
        a, b = t.get("test-a", empty), t.get("test-b", empty)
        cells = [f"{fmt(a[i])} / {fmt(b[i])}" for i in range(4)]
        cider = " / ".join("-" if x[4] is None else f"{x[4]:.1f}" for x in (a, b))
        poison = "none" if attack == "none" else f"{attack} {rate * 100:g} %"
        print(f"| {poison} | {'-' if attack == 'none' else tag} | {METHODS.get(method, method)} | "
              + " | ".join(cells) + f" | {cider} | {fmt(a[5])} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["work/bench/guard"])
