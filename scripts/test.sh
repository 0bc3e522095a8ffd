#!/usr/bin/env bash
# The README's test command (and exactly what CI runs): install what the tests need, lint, run every test.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not integration and not slow" for the fast part (which is
# also what a bare `pytest` runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The web page test drives a real browser: Debian's chromium (Playwright's own browser download cannot work here).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium for the browser test =="
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing: install it (e.g. sudo apt-get install chromium) or set NEURALCHAT_SKIP_BROWSER=1" >&2
  fi
fi
# The replicas test (tests/test_replicas.py) runs Debian's nginx in front of the servers and starts its own
# PostgreSQL cluster for their shared conversation log.
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
# The Ollama template tests (tests/quantize/test_ollama_render.py) render the Modelfile's Go template with Go's
# text/template, as Ollama does.
command -v go >/dev/null 2>&1 || missing+=(golang-go)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${missing[*]} for the replicas and Ollama template tests =="
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "${missing[*]} missing: install them (e.g. sudo apt-get install ${missing[*]}); the replicas," \
         "PostgreSQL log and Ollama template tests fail without them here (NEURALCHAT_REQUIRE_BACKENDS=1)" >&2
  fi
fi
# The embedded-model tests write up to about 2 GB at a time (tmp_path, deleted as each test passes; Gemma 3 270M's
# merged fp32 model is 1.1 GB) and the embedded models' conversions (SmolLM2 0.5 GB, Gemma 3 1.3 GB with its joined
# GGUF) are cached once. Say so up front rather than fail later with ENOSPC.
for dir in "${TMPDIR:-/tmp}" "$HOME"; do
  free_mb=$(df -Pm "$dir" | awk 'NR==2 {print $4}')
  if [ "${free_mb:-0}" -lt 4000 ]; then
    echo "warning: only ${free_mb} MB free on the disk of $dir; the tests need about 4 GB there" \
         "(free some space or point TMPDIR elsewhere), or some will fail with 'No space left on device'" >&2
  fi
done
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# A backend that `pip install ".[all,dev]"` installs and that is missing fails its tests here instead of skipping
# them (tests/require_backends.py).
export NEURALCHAT_REQUIRE_BACKENDS=1
.venv/bin/ruff check .
# One test process per core (pytest-xdist), at most 4: each embedded-model test holds 2-3 GB. Every test keeps to
# one OpenMP thread unless it takes its share of the cores (tests/conftest.py), so the processes never fight over
# a core. On a 2-core AMD EPYC with AVX512-BF16 (2026-12-03, clean clone) the tests took 20 min this way.
workers=$(nproc 2>/dev/null || echo 1)
[ "$workers" -gt 4 ] && workers=4
[ "$workers" -lt 2 ] && workers=0  # one core: run in this process
exec .venv/bin/python -m pytest -n "$workers" -m "" "$@"
