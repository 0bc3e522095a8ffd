"""pytest plugin: with NEURALCHAT_REQUIRE_BACKENDS=1 (CI sets it, scripts/test.sh), a backend that
`pip install ".[all,dev]"` installs and that is missing fails the test instead of skipping it, so an incomplete
install cannot pass as green. Only what pip does not install (BUILT_SEPARATELY) may still skip."""

from __future__ import annotations

import importlib
import os

import pytest

BUILT_SEPARATELY = {"llama_cpp": "compiled for the CPU: python -m benchmarks.llamacpp build"}
SWITCH = "NEURALCHAT_REQUIRE_BACKENDS"


def pytest_configure(config):
    if os.environ.get(SWITCH) != "1":
        return
    skip_if_missing = pytest.importorskip

    def importorskip(modname: str, *args, **kwargs):
        if modname.split(".")[0] in BUILT_SEPARATELY:
            return skip_if_missing(modname, *args, **kwargs)
        try:
            return importlib.import_module(modname)
        except ImportError as err:
            raise ImportError(f"{modname} is missing and {SWITCH}=1: the install is incomplete ({err})") from err

    pytest.importorskip = importorskip


# System programs scripts/test.sh installs with apt-get (as root): missing, they fail the test under the switch too.
INSTALLED_BY_TEST_SH = {"nginx": "nginx", "pg_ctl": "postgresql", "go": "golang-go"}


def skip_missing_program(program: str, reason: str) -> None:
    """A test that needs `program` (a key of INSTALLED_BY_TEST_SH) and cannot find it: skip with `reason`, or fail
    under NEURALCHAT_REQUIRE_BACKENDS=1."""
    if os.environ.get(SWITCH) == "1":
        pytest.fail(f"{reason}, and {SWITCH}=1: the install is incomplete (scripts/test.sh installs Debian's "
                    f"{INSTALLED_BY_TEST_SH[program]} as root)")
    pytest.skip(reason)
