"""Build nested dataclasses from a plain dict (a parsed YAML file), naming the exact key at fault.

Checks unknown keys (with a did-you-mean), basic types, `Literal` choices and `X | None`; the dataclasses'
own `__post_init__` then checks the values that need more than a type.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

from finetune.errors import UserError


class ConfigError(UserError):
    """A config problem; the message names the dotted key (`filter.min_turns`) and what is allowed."""


def bind(cls: type, data: Any, where: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key '{_join(where, key)}'{hint} (allowed: {', '.join(fields)})")
    kwargs = {k: _value(hints[k], v, _join(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field left out
        raise ConfigError(f"{where or 'config'}: {e}") from e


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _value(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return bind(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _value(inner[0], value, where)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where} is {value!r}; choose one of {', '.join(map(repr, get_args(tp)))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__} {value!r}")
        return [_value(get_args(tp)[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where} must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """`filter.min_turns=2` -> (['filter', 'min_turns'], 2); the value is read as YAML, like the file."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. filter.min_turns=2")
    return key.strip().split("."), yaml.safe_load(raw)


def apply_override(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {k} is not a section")
    node[keys[-1]] = value
