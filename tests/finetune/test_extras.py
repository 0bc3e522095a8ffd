"""finetune.extras: the one table of optional dependencies agrees with setup.cfg and constraints.txt, and require()
says what to install."""

from __future__ import annotations

import builtins
import configparser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from finetune import extras

REPO = Path(__file__).resolve().parents[2]


def _setup_cfg_requirements() -> dict[str, dict[str, Requirement]]:
    """{extra or CORE: {canonical distribution name: requirement}} from setup.cfg."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "setup.cfg")
    sections = {extras.CORE: cfg["options"]["install_requires"], **cfg["options.extras_require"]}
    out = {}
    for extra, text in sections.items():
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("%(")]
        out[extra] = {canonicalize_name(r.name): r for r in map(Requirement, lines)}
    return out


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[canonicalize_name(name)] = version.strip()
    return pins


@pytest.mark.parametrize("dep", extras.DEPENDENCIES, ids=lambda d: d.module)
def test_each_dependency_is_where_the_table_says_in_setup_cfg(dep):
    if dep.extra is None:
        assert dep.install, f"{dep.distribution} is outside setup.cfg, so the table must say how to install it"
        return
    requirements = _setup_cfg_requirements()
    assert dep.extra in requirements, f"setup.cfg has no extra {dep.extra!r}"
    listed = canonicalize_name(dep.via or dep.distribution)
    assert listed in requirements[dep.extra], f"setup.cfg's {dep.extra} does not list {listed}"
    if dep.version and not dep.via:  # a pin in setup.cfg (neural-compressor==3.10) must be the table's
        assert requirements[dep.extra][listed].specifier.contains(dep.version, prereleases=True)


@pytest.mark.parametrize("dep", [d for d in extras.DEPENDENCIES if d.version], ids=lambda d: d.module)
def test_versions_match_constraints_txt(dep):
    assert _constraints().get(canonicalize_name(dep.distribution)) == dep.version


def test_install_hint_gives_the_pinned_distribution_and_its_extra():
    assert extras.install_hint("neural_compressor.torch") == (
        "pip install 'neural-compressor[pt]==3.10' (or the quantize extra: pip install 'neuralchat-xeon[quantize]')")
    assert extras.install_hint("torch") == "pip install torch==2.13.0 (the CPU build; keep the pin)"
    assert extras.install_hint("gguf", "sentencepiece").startswith("pip install gguf==0.19.0 sentencepiece==0.2.3 ")
    with pytest.raises(KeyError, match="not in finetune.extras.DEPENDENCIES"):
        extras.install_hint("no_such_backend")


def test_require_returns_the_module_or_says_what_to_install(monkeypatch):
    import json

    monkeypatch.setitem(extras._BY_MODULE, "json", extras.Dependency("json", "json", "x", extras.CORE))
    assert extras.require("json") is json

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] == "lancedb":
            raise ImportError("No module named 'lancedb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError) as info:
        extras.require("lancedb", "The retrieval plugin")
    assert str(info.value) == (
        "The retrieval plugin needs lancedb (No module named 'lancedb'). Install it with: pip install lancedb==0.40.0 "
        "(or the rag extra: pip install 'neuralchat-xeon[rag]')")
