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
