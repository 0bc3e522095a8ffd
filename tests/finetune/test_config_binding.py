"""The one config binder (finetune/config_binding.py) and the command lines generated from config dataclasses.

pytest tests/finetune/test_config_binding.py
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from finetune.config_binding import (
    ConfigError,
    add_config_flags,
    apply_overrides,
    bind,
    check_choice,
    config_overrides,
    field_docs,
    fields_help,
    load_config,
    parse_override,
)
from finetune.errors import UserError


@dataclass
class Inner:
    size: int = 3
    """How many."""
    ratio: float | None = None
    """A share, or null."""


@dataclass
class Outer:
    name: str
    """What it is called (required)."""
    mode: Literal["fast", "slow"] = "fast"
    """Speed: fast or slow."""
    tags: list[str] = field(default_factory=list)
    """Labels."""
    inner: Inner = field(default_factory=Inner)
    paths: str | list[str] = "a"
    flag: bool = False
    """Turn it on."""
    extra: dict = field(default_factory=dict)


def test_binds_nested_optional_lists_and_unions():
    cfg = bind(Outer, {"name": "x", "mode": "slow", "tags": ["a"], "inner": {"size": 4, "ratio": 1},
                       "paths": ["p", "q"], "extra": {"k": 1}})
    assert cfg == Outer("x", "slow", ["a"], Inner(4, 1.0), ["p", "q"], False, {"k": 1})
    assert isinstance(cfg.inner.ratio, float)  # an int is accepted for a float
    assert bind(Outer, {"name": "x", "inner": {"ratio": None}}).inner.ratio is None
    assert bind(Inner, {"ratio": "1e-4"}).ratio == 1e-4  # YAML 1.1 reads 1e-4 (no dot) as a string


@pytest.mark.parametrize(("data", "message"), [
    ({"name": "x", "inner": {"sise": 1}}, "unknown key 'inner.sise'; did you mean 'size'? (allowed: size, ratio)"),
    ({"name": "x", "nmae": 1}, "unknown key 'nmae'; did you mean 'name'? (allowed: name, mode, tags, inner, "),
    ({"name": "x", "inner": {"size": "3"}}, "inner.size must be int, got str '3'"),
    ({"name": "x", "inner": {"size": True}}, "inner.size must be int, got bool True"),
    ({"name": "x", "inner": {"ratio": "half"}}, "inner.ratio must be float or null, got str 'half'"),
    ({"name": "x", "tags": "a"}, "tags must be a list, got str 'a'"),
    ({"name": "x", "tags": ["a", 2]}, "tags[1] must be str, got int 2"),
    ({"name": "x", "paths": 3}, "paths must be str or list[str], got int 3"),
    ({"name": "x", "mode": "warp"}, "mode='warp' is not valid; choose one of: fast, slow"),
    ({"name": "x", "inner": 5}, "inner: expected a mapping of keys, got int"),
    ({"name": "x", "extra": [1]}, "extra must be a mapping, got list [1]"),
    ({}, "Outer: missing required key(s) name"),
])
def test_errors_name_the_dotted_key_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError) as err:
        bind(Outer, data)
    assert message in str(err.value)
    assert isinstance(err.value, UserError)


def test_check_choice_takes_a_literal_or_a_collection():
    check_choice("X.mode", "fast", Literal["fast", "slow"])
    with pytest.raises(ConfigError, match=r"X.bits=True is not valid; choose one of: 4, 8"):
        check_choice("X.bits", True, (4, 8))
    with pytest.raises(ConfigError, match=r"X.task='x' is not valid; choose one of: '', chat"):
        check_choice("X.task", "x", ("", "chat"))


def test_overrides_are_read_as_yaml():
    assert parse_override("inner.size=4") == (["inner", "size"], 4)
    assert parse_override("tags=[a, b]") == (["tags"], ["a", "b"])
    assert parse_override("inner.ratio=null") == (["inner", "ratio"], None)
    assert parse_override("name=") == (["name"], None)
    data = {"name": "x", "inner": {"size": 1}}
    out = apply_overrides(data, ["inner.ratio=0.5", (["mode"], "slow")])
    assert out == {"name": "x", "mode": "slow", "inner": {"size": 1, "ratio": 0.5}}
    assert data == {"name": "x", "inner": {"size": 1}}  # the input is left as it was
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        parse_override("inner.size")
    with pytest.raises(ConfigError, match="name.first: name is not a section"):
        apply_overrides({"name": "x"}, ["name.first=1"])


def test_load_config_reads_the_file_then_values_then_overrides_and_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ninner:\n  size: 2\n")
    cfg = load_config(Outer, path, ["inner.size=5"], values={"mode": "slow"})
    assert (cfg.name, cfg.mode, cfg.inner.size) == ("x", "slow", 5)
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'inner.big'"):
        load_config(Outer, path, ["inner.big=1"])
    path.write_text("- a\n")
    with pytest.raises(ConfigError, match="c.yaml: expected a mapping of keys, got list"):
        load_config(Outer, path)
    with pytest.raises(FileNotFoundError):
        load_config(Outer, tmp_path / "missing.yaml")


def test_field_docs_are_the_strings_under_the_fields_inherited_too():
    @dataclass
    class Child(Inner):
        more: int = 0
        """Added by the child."""

    assert field_docs(Outer) == {"name": "What it is called (required).", "mode": "Speed: fast or slow.",
                                 "tags": "Labels.", "flag": "Turn it on."}
    assert field_docs(Child) == {"size": "How many.", "ratio": "A share, or null.", "more": "Added by the child."}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_config_flags(parser, Outer, aliases={"name": ["-n"]}, skip=["extra"])
    return parser


def test_generated_flags_set_the_same_fields(tmp_path):
    args = _parser().parse_args(["inner.ratio=0.5", "-n", "x", "--inner.size", "7", "--tags", "a", "b", "--flag",
                                 "--mode", "slow", "--paths", "p"])
    cfg = load_config(Outer, overrides=config_overrides(args))
    assert cfg == Outer("x", "slow", ["a", "b"], Inner(7, 0.5), ["p"], True)  # str | list[str]: a list of one
    args = _parser().parse_args(["--name", "x", "--flag", "false", "--inner.ratio", "null"])
    assert load_config(Outer, overrides=config_overrides(args)).flag is False
    assert load_config(Outer, overrides=config_overrides(_parser().parse_args(["--name=x", "--no-flag"]))).flag is False
    assert config_overrides(_parser().parse_args([])) == []  # an absent flag leaves the file's value


def test_every_flag_help_has_the_docstring_type_and_default(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for doc in field_docs(Outer).values():
        assert doc in text
    assert "(str; required)" in text and "({fast,slow}; default: fast)" in text
    assert "How many. (int; default: 3)" in text and "--inner.size" in text and "--extra" not in text
    listing = fields_help(Outer)
    assert "inner.ratio (float or null; default: null)" in listing and "A share, or null." in listing


def test_shipped_configs_bind_with_the_same_binder():
    """Every config dataclass documents each field it exposes on a command line."""
    from finetune.evaluate import EvalConfig
    from neural_chat_app.improve import LoopConfig
    from neural_chat_app.server.settings import ServerSettings
    from quantize.config import QuantizeConfig

    for cls in (EvalConfig, LoopConfig, ServerSettings, QuantizeConfig):
        undocumented = [f.name for f in dataclasses.fields(cls) if f.name not in field_docs(cls)]
        assert not undocumented, (cls.__name__, undocumented)
