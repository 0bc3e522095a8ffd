"""CI's switch (NEURALCHAT_REQUIRE_BACKENDS=1, tests/require_backends.py): a missing backend that the install
should have brought fails its test; without the switch it skips; what pip does not install still skips."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = '''
import pytest

def test_needs_a_backend():
    pytest.importorskip("no_such_backend_for_this_test")

def test_needs_llama_cpp_built_separately():
    pytest.importorskip("llama_cpp")
'''


def _run(tmp_path: Path, switch: str | None) -> str:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.pop("NEURALCHAT_REQUIRE_BACKENDS", None)
    if switch:
        env["NEURALCHAT_REQUIRE_BACKENDS"] = switch
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-m", "pytest", "-c", os.devnull, "--rootdir", str(tmp_path), "-rA",
                           "-p", "tests.require_backends", "-p", "no:cacheprovider", str(tmp_path / "test_probe.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return done.stdout + done.stderr


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is not None,
                    reason="llama-cpp-python is installed here, so its skip cannot be shown")
def test_the_switch_turns_a_missing_backend_into_a_failure(tmp_path):
    out = _run(tmp_path, "1")
    assert "FAILED" in out and "test_needs_a_backend" in out and "install is incomplete" in out
    assert "SKIPPED" in out and "1 failed, 1 skipped" in out


def test_without_the_switch_a_missing_backend_skips(tmp_path):
    out = _run(tmp_path, None)
    assert " failed" not in out and "skipped" in out and "could not import 'no_such_backend_for_this_test'" in out


@pytest.mark.parametrize("switch", ["1", None])
def test_a_missing_program_that_test_sh_installs_fails_only_under_the_switch(monkeypatch, switch):
    from tests.require_backends import SWITCH, skip_missing_program

    if switch:
        monkeypatch.setenv(SWITCH, switch)
    else:
        monkeypatch.delenv(SWITCH, raising=False)
    expected = pytest.fail.Exception if switch else pytest.skip.Exception
    with pytest.raises(expected, match="nginx is not installed") as caught:
        skip_missing_program("nginx", "nginx is not installed")
    assert ("scripts/test.sh installs Debian's nginx" in str(caught.value)) == bool(switch)
