#!/bin/bash
# The GPU check: robustit's CUDA path on a GPU machine, measured (docs/training.md, "On a GPU").
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# 1. versions and the GPU; 2. the embedded world's first 2000 training samples and 100 images
# per test set (the same samples as the full world: each sample has its own seed);
# 3. benchmarks/bench_train_generate.py on the GPU and, for the same machine's CPU, on one
# thread; 4. the quick grid's clean and Blended rows trained and evaluated on the GPU
# (benchmarks/specs/quick-gpu.yaml), one run at a time so each run's wall time is its own.
#
# A GPU machine without robustit's dependencies gets them from $CARRY (benchmarks/gpu_env.sh).
# Results land in OUTDIR:
# versions.txt, throughput.txt, results.jsonl (the grid's cell records), bench.log.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
source "$(dirname "$0")/gpu_env.sh"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc
  $py -c "import torch, transformers, accelerate, kornia; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'kornia', kornia.__version__)"
  java -version 2>&1 | head -1; git rev-parse HEAD; } 2>&1 | tee "$out/versions.txt"
world="$tmp/world-2000"
$py -m robustit data build --out "$world" --pretrain 0 --train 2000 --val 10 --test 100 \
  --test-vqa 10 --workers "$(nproc)" --quiet || exit 1
{ $py benchmarks/bench_train_generate.py --data "$world" --device cuda --threads 1 --steps 60 --n 256
  $py benchmarks/bench_train_generate.py --data "$world" --device cpu --threads 1 --steps 30 --n 64
} 2>&1 | grep -v -i warn | tee "$out/throughput.txt"
start=$(date +%s)
$py -m robustit bench --spec benchmarks/specs/quick-gpu.yaml --out "$tmp/bench-quick-gpu" --world "$world" \
  --jobs 1 > "$out/bench.log" 2>&1
echo "bench rc=$? wall=$(( $(date +%s) - start ))s" | tee -a "$out/bench.log"
cp "$tmp/bench-quick-gpu/results.jsonl" "$out/" 2>/dev/null
tail -n 25 "$out/bench.log"
