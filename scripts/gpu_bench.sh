#!/usr/bin/env bash
# The GPU rows of the benchmark tables, on one CUDA host, in one go (budget 9 minutes; each command gets what is
# left of it): the five real model shapes of `benchmarks train --shape` with plain Trainer + PEFT in bf16, ours and
# ours-qlora (NF4 weights + paged 8-bit AdamW, bitsandbytes), then the inference benchmark's GPU paths (transformers
# bf16 and fp16 generate, on the embedded model and at the 1B and 8B shapes), then the report with these files
# beside the CPU's results.
#
#   scripts/setup.sh && scripts/gpu_bench.sh          # on the GPU host; GPU_BENCH_SECONDS=540 sets the budget
#
# On a GPU host `pip install torch==<the pin>` takes PyPI's CUDA build; bitsandbytes comes with the `gpu` extra.
# Results: benchmarks/results/train-<shape>-cuda-*.json, infer-cuda-*.json and the report's tables. Never run here
# on a CPU-only machine: it stops at once and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import sys, torch
sys.exit(None if torch.cuda.is_available() else f'gpu_bench: torch {torch.__version__} sees no CUDA device; run this on a GPU host')"
"$PY" -c "import bitsandbytes" 2>/dev/null || "$PY" -m pip install -q -c constraints.txt ".[gpu]"
deadline=$(( $(date +%s) + ${GPU_BENCH_SECONDS:-540} ))
run() {
  local left=$(( deadline - $(date +%s) ))
  if (( left < 30 )); then echo "-- not run (the time budget is spent): benchmarks $*"; return; fi
  echo "== benchmarks $* (${left}s left)"
  timeout "$left" "$PY" -m benchmarks "$@" || echo "-- failed or stopped at the budget: benchmarks $*"
}
# Smallest first, so that a short budget still fills most rows. A GPU step is fast: more steps than the CPU's 2.
for shape in qwen2.5-0.5b llama-3.2-1b qwen2.5-1.5b llama-3.2-3b llama-3.1-8b; do
  run train --device cuda --shape "$shape" --steps 6 --warmup 2
done
run infer --device cuda --paths hf-bf16,hf-fp16
# generate at two real sizes (benchmarks/results/infer-<shape>-cuda-*.json, beside the CPU's infer-<shape>-*)
for shape in llama-3.2-1b llama-3.1-8b; do
  run infer --device cuda --shape "$shape" --paths hf-bf16,hf-fp16
done
shopt -s nullglob
files=(benchmarks/results/train-*-cuda-latest.json benchmarks/results/infer-cuda-latest.json)
if (( ${#files[@]} )); then "$PY" -m benchmarks report --gpu "${files[@]}"; else echo "-- no GPU result was written"; fi
