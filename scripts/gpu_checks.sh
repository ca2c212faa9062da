#!/usr/bin/env bash
# The GPU measurements of results/performance.md, as one script for a machine with one CUDA GPU.
# Needs the checkout installed (make install) and Fashion-MNIST in $NEREPRO_DATA. Writes to ${OUT:-gpu-out}/.
#   NEREPRO_DATA=data OUT=gpu-out scripts/gpu_checks.sh
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
nerepro=.venv/bin/nerepro
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
date -u +%Y-%m-%dT%H:%M:%SZ >> "$out/gpu.txt"
# 1. the CUDA fast path against the CPU path, bf16 included
.venv/bin/python -m pytest -q -m gpu > "$out/pytest-gpu.txt" 2>&1
# 2. C1 at B = 5000 in bf16 and TF32, C1 at B = 100, F1 at small B with one and two workers' worth
for args in "--network C1 --batch-size 5000 --alpha 1.5 --precision bf16 --steps 30 --warmup 10" \
            "--network C1 --batch-size 5000 --alpha 1.5 --precision fp32 --steps 30 --warmup 10" \
            "--network C1 --batch-size 100 --alpha 1 --steps 300 --warmup 50" \
            "--network F1 --batch-size 100 --alpha 1 --steps 1000 --warmup 100" \
            "--network F1 --batch-size 100 --alpha 1 --steps 1000 --warmup 100 --compile reduce-overhead"; do
  $nerepro bench $args --device cuda --json >> "$out/bench.jsonl" 2>> "$out/bench.err"
done
# 3. F1's whole paper grid (36 configurations x 10 seeds) to L**, timed; resumable if the machine goes away
start=$(date +%s)
$nerepro sweep configs/paper.toml --network F1 --results "$out/f1-gpu" --device cuda > "$out/f1-sweep.txt" 2>&1
echo "f1 grid wall seconds: $(( $(date +%s) - start ))" >> "$out/f1-sweep.txt"
make report RESULTS="$out/f1-gpu" > "$out/f1-report.txt" 2>&1
