#!/bin/bash
# Issue 3's remaining lever, measured on a GPU machine: does re-pretraining the embedded base (the
# shipped recipe, or with `robustit pretrain --scene-pool latents`) make the VL-Trojan patch
# implant from the picture alone, where the shipped base does not? (docs/results.md,
# "Re-pretraining the base".)
#
#   bash benchmarks/gpu_pretrain_calib.sh OUTDIR [STEPS] [POOLS]
#
# For each entry of POOLS (default "mean latents": the shipped recipe, re-run as the control, and
# the new one; an entry POOL-sN pretrains with seed N instead of 0; the entry `shipped` skips
# pretraining and uses the shipped base), in parallel on the one GPU: pretrain STEPS steps
# (default 1500, the shipped base's command otherwise unchanged), then
#   1. benchmarks/trigger_visibility.py for vltrojan and blended on that base (adapter shift);
#   2. VL-Trojan poisoning of the first 2000 training samples at 5 % with no text trigger at all
#      (`--text-trigger-mode no-text`: the patch alone), the patch optimised against that base;
#   3. VanillaIT, 3 epochs; evaluation on 100 images of test-a and test-b (ASR = the patch alone).
# Writes OUTDIR/summary.txt as it goes and, per pool, OUTDIR/<pool>.tar.gz (its logs, the
# visibility and evaluation JSON, the pretraining loss log) and the base model folder as
# OUTDIR/base-<pool>.tar.part-* (15 MB pieces: `cat base-latents.tar.part-* | tar -x`), so that
# a device run's few returned files hold all of it (PACK_BASE=0: no base pieces). Sizes shrink for a smoke test with $WORLD_ARGS.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_pretrain_calib.sh OUTDIR [STEPS] [POOLS]}
steps=${2:-1500}
pools=${3:-mean latents}
source "$(dirname "$0")/gpu_env.sh"
world="$tmp/world-calib"
rm -rf "$tmp/calib-out" "$tmp"/base-* "$tmp"/poisoned-* "$tmp"/run-*
threads=$(( $(nproc) / 4 > 0 ? $(nproc) / 4 : 1 ))
export OMP_NUM_THREADS=$threads  # two pools side by side share the cores
# the full pretrain split (the shipped base's data) and the first 2000 training samples
$py -m robustit data build --out "$world" ${WORLD_ARGS:---train 2000 --val 10 --test 256 --test-vqa 10} \
  --workers "$(nproc)" --quiet || exit 1
echo "world built $(date -u +%T)" | tee "$out/summary.txt"

one_pool() {
  local pool=$1 d="$tmp/calib-out/$1" base="$tmp/base-$1" start seed=0
  mkdir -p "$d"; start=$(date +%s)
  if [ "$pool" = shipped ]; then
    base=embedded
  else
    [[ "$pool" == *-s* ]] && seed=${pool##*-s}
    $py -m robustit pretrain --data "$world" --out "$base" --max-steps "$steps" --seed "$seed" \
      --scene-loss-weight 0.05 --scene-pool "${pool%%-s*}" --threads "$threads" --quiet > "$d/pretrain.log" 2>&1 || return 1
    echo "$pool pretrained $(( $(date +%s) - start ))s" >> "$out/summary.txt"
  fi
  $py benchmarks/trigger_visibility.py --data "$world" --model "$base" --n 256 \
    --attacks vltrojan,blended --out "$d/visibility.json" > "$d/visibility.log" 2>&1
  $py -m robustit poison --data "$world" --split train --attack vltrojan --rate 0.05 --seed 0 \
    --text-trigger-mode no-text --model "$base" --out "$tmp/poisoned-$pool" --quiet > "$d/poison.log" 2>&1 || return 1
  $py -m robustit train --data "$tmp/poisoned-$pool" --split train --method vanilla --out "$tmp/run-$pool" \
    --model "$base" --seed 0 --epochs 3 --quiet > "$d/train.log" 2>&1 || return 1
  for t in test-a test-b; do
    $py -m robustit eval --model "$base" --tuned "$tmp/run-$pool" --data "$world" --split $t --shots 0 \
      --seed 0 --out "$d/eval-$t.json" --quiet --manifest "$tmp/poisoned-$pool/manifest.json" --n 100 \
      --scorers BLEU,ROUGE_L,CIDEr > "$d/eval-$t.log" 2>&1 || return 1
  done
  echo "$pool done $(( $(date +%s) - start ))s" >> "$out/summary.txt"
}

pack() {  # the pool's logs and results, and its base model in pieces, into OUTDIR
  local pool=$1
  cp "$tmp/base-$pool.run/logs/loss.jsonl" "$tmp/calib-out/$pool/pretrain-loss.jsonl" 2>/dev/null
  tar -czf "$out/$pool.tar.gz" -C "$tmp/calib-out" "$pool"
  [ "${PACK_BASE:-1}" = 1 ] && [ -d "$tmp/base-$pool" ] && tar -cf - -C "$tmp" "base-$pool" | split -b 15m - "$out/base-$pool.tar.part-"
}

for pool in $pools; do (one_pool "$pool"; pack "$pool") & done
wait
for pool in $pools; do
  echo "== $pool" >> "$out/summary.txt"
  grep -v -i warn "$tmp/calib-out/$pool/visibility.log" | tail -n 4 >> "$out/summary.txt"
  for t in test-a test-b; do
    $py - "$tmp/calib-out/$pool/eval-$t.json" "$t" >> "$out/summary.txt" 2>&1 <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
asr = {h: v.get("rate_percent") for h, v in r["asr"]["vltrojan"].items() if isinstance(v, dict)}
print(sys.argv[2], "CIDEr", round(r["metrics"]["CIDEr"], 1), "ASR", asr,
      "false trigger", r["false_trigger_rate"]["rate_percent"])
EOF
  done
done
cat "$out/summary.txt"
