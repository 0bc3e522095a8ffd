#!/usr/bin/env bash
# The README's test command (and exactly what CI runs): install what the tests need, lint, run every test.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not integration and not slow" for the fast part.
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
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
