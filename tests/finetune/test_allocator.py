"""The training CLI runs on tcmalloc/jemalloc when the machine has one, and says which.

pytest tests/finetune/test_allocator.py
"""

import subprocess
import sys

import pytest

from finetune import allocator


def test_system_choice_and_unknown_choice():
    assert allocator.find_allocator("system") is None
    with pytest.raises(ValueError, match="NEURALCHAT_ALLOCATOR='mimalloc': use auto, tcmalloc, jemalloc or system"):
        allocator.find_allocator("mimalloc")


def test_finds_a_library_in_the_search_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(allocator, "SEARCH_DIRS", (str(tmp_path),))
    assert allocator.find_allocator("auto") is None
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    assert allocator.find_allocator("auto") == str(tmp_path / "libjemalloc.so.2")
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert allocator.find_allocator("auto").endswith("libtcmalloc_minimal.so.4")  # tcmalloc first: fastest here
    assert allocator.find_allocator("jemalloc").endswith("libjemalloc.so.2")
    env = allocator.allocator_env({"LD_PRELOAD": "/x/other.so"})
    assert env["LD_PRELOAD"] == f"{tmp_path / 'libtcmalloc_minimal.so.4'}:/x/other.so"
    assert allocator.allocator_env({"NEURALCHAT_ALLOCATOR": "system"}).get("LD_PRELOAD") is None


def test_a_child_started_with_the_env_runs_on_the_allocator():
    path = allocator.find_allocator()
    if path is None:
        pytest.skip("no tcmalloc/jemalloc on this machine (scripts/setup.sh installs one where it can)")
    code = "from finetune.allocator import loaded_allocator; print(loaded_allocator())"
    out = subprocess.run([sys.executable, "-c", code], env=allocator.allocator_env(), capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out in ("tcmalloc", "jemalloc") and out in path
    system = allocator.allocator_env({"NEURALCHAT_ALLOCATOR": "system"})
    plain = subprocess.run([sys.executable, "-c", code], env=system, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert plain == "None"
