#!/usr/bin/env bash
# The README's first command: set up .venv (once), fine-tune the embedded SmolLM2-135M-Instruct with LoRA (bf16 on
# AMX; the precision this CPU trains fastest in: finetune.hardware.training_precision) on the Aurora support-desk
# demo data, then ask the base and the tuned model the same question.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
SYSTEM="You are the support assistant of Aurora Bikes. Answer briefly and precisely."
QUESTION="${1:-How long does it take to charge the Aurora X2, and how far does it go?}"

echo "== fine-tuning (python -m finetune configs/demo_aurora.yaml) =="
$PY -m finetune configs/demo_aurora.yaml

echo
echo "== Q: $QUESTION"
echo "-- base model (smollm2-135m-instruct):"
$PY -m neural_chat_app ask "$QUESTION" --system "$SYSTEM" --greedy --max-new-tokens 60 2>/dev/null
echo "-- fine-tuned (runs/demo_aurora):"
$PY -m neural_chat_app ask "$QUESTION" --model runs/demo_aurora --system "$SYSTEM" --greedy --max-new-tokens 60 \
  2>/dev/null
