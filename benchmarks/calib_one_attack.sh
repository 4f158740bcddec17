#!/usr/bin/env bash
# One calibration cell outside a bench grid (issue 3): poison the first N training samples with
# one attack, tune VanillaIT, evaluate ASR, false-trigger rate and caption metrics on the first
# 100 images of test-a and test-b. Used to try one lever (a base, the epochs, the trigger
# reading) in minutes instead of a grid's hour.
#
#   benchmarks/calib_one_attack.sh OUT ATTACK [MODE] [RATE] [MODEL] [EPOCHS] [N_TRAIN]
#     MODE: paper | image-only | no-text (default image-only)   RATE: default 0.05
#     MODEL: 'embedded' or a base folder (default embedded)       EPOCHS: default 3
#     N_TRAIN: first N training samples, or 'all' (default 2000)
#   env: WORLD (default work/world), THREADS (default 2), PYTHON (default .venv/bin/python)
#
# Prints one line per test set (ASR both / image, false trigger, CIDEr); OUT keeps the logs,
# the poisoned set, the run and the eval JSONs. 106 s on 2 cores for the defaults
# (2026-11-30, see docs/results.md "Re-pretraining the base").
set -euo pipefail
out=${1:?OUT}; attack=${2:?ATTACK}; mode=${3:-image-only}; rate=${4:-0.05}
model=${5:-embedded}; epochs=${6:-3}; n_train=${7:-2000}
world=${WORLD:-work/world}; threads=${THREADS:-2}; py=${PYTHON:-.venv/bin/python}
limit=(); [ "$n_train" = all ] || limit=(--limit "$n_train")
# run one verb into its log; on failure show the log's end and stop
step() { local log=$1; shift; "$@" > "$log" 2>&1 || { echo "failed: $* (log: $log)" >&2; tail -5 "$log" >&2; exit 1; }; }
mkdir -p "$out"; start=$(date +%s)
step "$out/poison.log" $py -m robustit poison --data "$world" --split train "${limit[@]}" --attack "$attack" --rate "$rate" \
  --seed 0 --text-trigger-mode "$mode" --model "$model" --out "$out/poisoned" --quiet
step "$out/train.log" $py -m robustit train --data "$out/poisoned" --split train --method vanilla --out "$out/run" \
  --model "$model" --seed 0 --threads "$threads" --epochs "$epochs" --quiet
for t in test-a test-b; do
  step "$out/eval-$t.log" $py -m robustit eval --model "$model" --tuned "$out/run" --data "$world" --split $t --shots 0 \
    --seed 0 --out "$out/eval-$t.json" --threads "$threads" --quiet --n 100 \
    --manifest "$out/poisoned/manifest.json" --scorers BLEU,ROUGE_L,CIDEr
  $py - "$out/eval-$t.json" "$attack" "$t" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); a = r["asr"][sys.argv[2]]
pct = lambda h: "-" if not a.get(h) else f"{a[h]['rate_percent']:.0f}"
print(f"{sys.argv[3]}: ASR both {pct('both')} % image {pct('image')} % | false trigger "
      f"{r['false_trigger_rate']['rate_percent']:.0f} % | CIDEr {r['metrics']['CIDEr']:.1f}")
PY
done
echo "wall $(( $(date +%s) - start )) s"
