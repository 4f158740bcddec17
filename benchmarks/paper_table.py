"""Markdown table of a paper-style grid's cells (attack x method): mean ± sample std over the seeds
present (n = seeds) of ASR and its halves, false-trigger rate and CIDEr (zero-shot), one-shot CIDEr
and training seconds, read from the cell records. RobustIT runs with one component (the
`ablation` grid) get their own rows: IDR only, AAR only.

    python benchmarks/paper_table.py [RESULTS_DIR]   (default work/bench/paper)
"""
import collections
import glob
import json
import statistics
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "work/bench/paper"
cells = [json.load(open(f)) for f in glob.glob(f"{out}/cells/*.json")]
vals = collections.defaultdict(list)  # (attack, method, test_set, shots, figure) -> values over seeds
seeds = collections.defaultdict(set)
METHODS = {"vanilla": "VanillaIT", "idr": "IDR only", "aar": "AAR only", "robustit": "RobustIT"}


def method_of(key):
    """vanilla, idr, aar or robustit (both components)."""
    if key["method"] != "robustit":
        return key["method"]
    return {"idr": "idr", "aar": "aar"}.get(key.get("params", {}).get("components"), "robustit")


for r in cells:
    k, e = r["key"], r["eval"]
    a = (e.get("asr") or {}).get(k["attack"]) or {}
    base = (k["attack"], method_of(k), k["test_set"], k["shots"])
    for h in ("both", "image", "text"):
        v = (a.get(h) or {}).get("rate_percent")
        if v is not None:
            vals[base + (h,)].append(v)
    vals[base + ("ftr",)].append(e["false_trigger_rate"]["rate_percent"])
    vals[base + ("cider",)].append(e["metrics"]["CIDEr"])
    if k["test_set"] == "test-a" and k["shots"] == 0:
        vals[(k["attack"], method_of(k), "train")].append(r["train"]["wall_seconds"])
        seeds[(k["attack"], method_of(k))].add(k["seed"])

def s(key, d=1):
    v = vals.get(key)
    if not v:
        return "-"
    m = statistics.mean(v)
    return f"{m:.{d}f}" if len(v) == 1 else f"{m:.{d}f} ± {statistics.stdev(v):.{d}f}"

order = ["none", "badnet", "blended", "sig", "ssba", "ftrojan", "trojvqa", "vltrojan"]
names = {"none": "none", "badnet": "BadNets", "blended": "Blended", "sig": "SIG", "ssba": "SSBA",
         "ftrojan": "FTrojan", "trojvqa": "TrojVQA", "vltrojan": "VL-Trojan"}
print("| attack | method | n | ASR a | ASR b | image half a / b | text half a / b | false trigger a / b | CIDEr a | CIDEr b | CIDEr one-shot a / b | train s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for at in order:
    for m in METHODS:
        if (at, m) not in seeds:
            continue
        def q(t, sh, fig, d=1, at=at, m=m):
            return s((at, m, t, sh, fig), d)
        dash = at == "none"
        row = [names[at], METHODS[m], str(len(seeds[(at, m)])),
               "-" if dash else q("test-a", 0, "both"), "-" if dash else q("test-b", 0, "both"),
               "-" if dash else f"{q('test-a', 0, 'image')} / {q('test-b', 0, 'image')}",
               "-" if dash else f"{q('test-a', 0, 'text')} / {q('test-b', 0, 'text')}",
               f"{q('test-a', 0, 'ftr')} / {q('test-b', 0, 'ftr')}",
               q("test-a", 0, "cider"), q("test-b", 0, "cider"),
               f"{q('test-a', 1, 'cider')} / {q('test-b', 1, 'cider')}",
               s((at, m, "train"), 0)]
        print("| " + " | ".join(row) + " |")
