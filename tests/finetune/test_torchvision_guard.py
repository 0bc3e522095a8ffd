"""A torchvision built for a CUDA torch (what pip takes from PyPI for optimum-intel) must not break transformers
beside the CPU torch; a matching one is left alone. Each case runs in a fresh interpreter with a stand-in
torchvision first on the path: its version.py says which build it is, and importing it fails the way the real
CUDA wheel fails beside the CPU torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, os
import finetune.torchvision_guard as guard
if os.environ["FAKE_TORCHVISION_BREAKS"] == "1":
    import transformers.image_utils  # imports torchvision whenever transformers thinks it is installed
from transformers.utils.import_utils import is_torchvision_available
print(json.dumps({"hidden": guard.hidden, "available": is_torchvision_available()}))
"""


def _run_with_torchvision(tmp_path: Path, build: str) -> dict:
    package = tmp_path / "site" / "torchvision"
    package.mkdir(parents=True)
    (package / "version.py").write_text(f"__version__ = '{build}'\n")
    (package / "__init__.py").write_text(
        "import os\n"
        "if os.environ.get('FAKE_TORCHVISION_BREAKS') == '1':\n"
        "    raise RuntimeError('operator torchvision::nms does not exist')\n"
        f"__version__ = '{build}'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)]),
           "FAKE_TORCHVISION_BREAKS": "1" if "cu" in build else "0"}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif("+cpu" not in version("torch"), reason="the guard acts only beside a CPU build of torch")
def test_a_cuda_torchvision_is_hidden_beside_the_cpu_torch(tmp_path):
    seen = _run_with_torchvision(tmp_path, "0.28.0+cu130")
    assert seen["available"] is False
    assert "0.28.0+cu130" in seen["hidden"] and version("torch") in seen["hidden"]


def test_a_matching_torchvision_is_left_alone(tmp_path):
    local = version("torch").partition("+")[2]
    seen = _run_with_torchvision(tmp_path, "0.28.0" + (f"+{local}" if local else ""))
    assert seen == {"hidden": None, "available": True}
