#!/usr/bin/env bash
# Sweep of the embedded-cpu preset: VanillaIT on clean `train` at several learning rates and
# epochs, evaluated on test-a and test-b (CIDEr, BLEU-4). Two runs at a time, 1 thread each.
#   bash benchmarks/sweep_preset.sh work/world work/base work/sweep "3e-4 1e-3 3e-3" 3 200
set -euo pipefail
world=${1:-work/world}; base=${2:-embedded}; out=${3:-work/sweep}
lrs=${4:-"3e-4 1e-3 3e-3"}; epochs=${5:-3}; n=${6:-200}
mkdir -p "$out"
one() {
  lr=$1; run="$out/lr$lr-e$epochs"
  robustit train --data "$world" --split train --model "$base" --method vanilla --lr "$lr" \
      --epochs "$epochs" --out "$run" --threads 1 --quiet > "$run.log" 2>&1
  for t in test-a test-b; do
    robustit eval --model "$base" --tuned "$run" --data "$world" --split "$t" --n "$n" \
        --out "$run/eval-$t.json" --threads 1 --quiet --scorers BLEU,ROUGE_L,CIDEr >> "$run.log" 2>&1
  done
  echo "lr=$lr epochs=$epochs: $(python -c "
import json,sys
for t in ('test-a','test-b'):
    r=json.load(open('$run/eval-'+t+'.json')); m=r['metrics']
    print(t, 'CIDEr=%.1f BLEU_4=%.1f' % (m['CIDEr'], m['BLEU_4']), end='  ')
s=json.load(open('$run/train.json')); print('train %.0fs %.1f samples/s' % (s['wall_seconds'], s['samples_per_second']))")"
}
set -- $lrs
while [ $# -gt 0 ]; do
  one "$1" & p1=$!
  if [ $# -gt 1 ]; then one "$2" & p2=$!; wait $p2; shift; fi
  wait $p1; shift
done
