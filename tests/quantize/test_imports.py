"""Import direction and laziness: `import neural_chat_app` / `import quantize` load no quantization library.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/quantize/test_imports.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ["neural_compressor", "openvino", "optimum", "nncf", "gguf", "auto_round"]


@pytest.mark.parametrize("package", ["quantize", "neural_chat_app"])
def test_importing_loads_no_quantization_library(package):
    code = f"import sys, {package}; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_quantize_imports_nothing_to_its_left():
    pattern = re.compile(r"^\s*(from|import)\s+(neural_chat_app|benchmarks)\b", re.MULTILINE)
    for path in (ROOT / "quantize").glob("*.py"):
        assert not pattern.search(path.read_text()), path.name
