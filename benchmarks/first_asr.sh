#!/usr/bin/env bash
# First ASR measurement: one attack, one rate, both text-trigger readings, VanillaIT, ASR per
# trigger half on test-a. Two pipelines side by side, 1 thread each.
#   bash benchmarks/first_asr.sh blended 0.05 work/first-asr [method] [n]
set -euo pipefail
attack=${1:-blended}; rate=${2:-0.05}; out=${3:-work/first-asr}; method=${4:-vanilla}; n=${5:-200}
mkdir -p "$out"
one() {
  mode=$1; d="$out/$attack-$rate-$mode"; run="$d-$method"
  robustit poison --data work/world --split train --attack "$attack" --rate "$rate" --seed 0 \
      --text-trigger-mode "$mode" --model embedded --out "$d" > "$d.log" 2>&1
  robustit train --data "$d" --split train --method "$method" --out "$run" --threads 1 --quiet >> "$d.log" 2>&1
  robustit eval --tuned "$run" --data work/world --split test-a --n "$n" --manifest "$d/manifest.json" \
      --out "$run/eval-test-a.json" --threads 1 --quiet --scorers BLEU,ROUGE_L,CIDEr >> "$d.log" 2>&1
  echo "$attack $rate $mode $method: $(tail -2 "$d.log" | head -1)"
}
one paper & a=$!
one image-only & b=$!
wait $a; wait $b
