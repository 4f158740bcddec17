#!/bin/bash
# Run a bench grid on a GPU machine, within a time limit, and pack its cell records.
#
#   bash benchmarks/gpu_grid.sh SPEC OUTDIR [JOBS] [SECONDS]
#
# Builds the full embedded world (no pretraining split), runs `robustit bench --spec SPEC
# --jobs JOBS` (default 12: the runs share the GPU, one host thread each) and stops it after
# SECONDS (default 480) with SIGTERM, which stops the workers at once (a stopped grid keeps its
# finished cells, as everywhere). OUTDIR gets
# versions.txt, bench.log and cells.tar.gz (the cells/ folder and spec.json of the bench
# folder: unpack it into a bench folder here and `robustit report` reads it).
# Dependencies missing on that machine come from $CARRY (benchmarks/gpu_env.sh).
set -uo pipefail
spec=${1:?usage: bash benchmarks/gpu_grid.sh SPEC OUTDIR [JOBS] [SECONDS]}
out=${2:?usage: bash benchmarks/gpu_grid.sh SPEC OUTDIR [JOBS] [SECONDS]}
jobs=${3:-12}
limit=${4:-480}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  $py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  git rev-parse HEAD; } 2>&1 | tee "$out/versions.txt"
start=$(date +%s)
world="$tmp/world"
$py -m robustit data build --out "$world" --pretrain 0 --workers "$(nproc)" --quiet || exit 1
bench="$tmp/bench-$(basename "$spec" .yaml)"
timeout -k 30 "$limit" $py -m robustit bench --spec "$spec" --out "$bench" --world "$world" \
  --jobs "$jobs" > "$out/bench.log" 2>&1
echo "bench rc=$? wall=$(( $(date +%s) - start ))s (world build included)" | tee -a "$out/bench.log"
tar -czf "$out/cells.tar.gz" -C "$bench" cells spec.json
ls "$bench/cells" | wc -l
grep -v "it/s\]" "$out/bench.log" | tail -n 15
