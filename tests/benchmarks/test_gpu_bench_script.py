"""scripts/gpu_bench.sh, the GPU rows in one go: on a machine without CUDA it stops at once and says why.

pytest tests/benchmarks/test_gpu_bench_script.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_bench.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script would run every GPU row")
def test_without_cuda_it_stops_before_running_anything_and_says_so(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT)], env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "sees no CUDA device; run this on a GPU host" in proc.stderr
    assert "== benchmarks" not in proc.stdout  # no benchmark started


def test_every_size_of_the_cpu_table_is_in_the_gpu_script():
    from benchmarks.shapes import SIZE_LADDER

    text = SCRIPT.read_text()
    assert all(shape in text for shape in SIZE_LADDER), [s for s in SIZE_LADDER if s not in text]
