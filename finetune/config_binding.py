"""The one binder behind every config dataclass: a mapping, a YAML file and a command line become the same object.

    from finetune.config_binding import load_config
    cfg = load_config(QuantizeConfig, "configs/quantize_int8_ov.yaml", ["bits=4", "scheme=rtn"])

- `bind(cls, mapping, where)` builds a dataclass from a mapping: nested dataclasses, `X | None` and other unions,
  lists, dicts, `Literal` choices, enums. An unknown key is refused with its dotted path, a did-you-mean and the
  keys allowed; a value of the wrong type is named with where it was set. The dataclass's own `__post_init__`
  then checks what needs more than a type.
- One override syntax for every command line: `section.key=value`, the value read as YAML (as in the file).
- One way to document a field: the string literal right under it (an attribute docstring). `field_docs` reads
  them, and they are the `--help` text of the flags `add_config_flags` generates from the same dataclass.
- One `check_choice` for the `__post_init__` checks of every config.

No heavy import here: the data pipeline, the server and `quantize` all bind their configs with it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import enum
import functools
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from finetune.errors import UserError

T = TypeVar("T")

RAW_MAPPING = {"raw_mapping": True}
"""Field metadata: `bind` hands a mapping to the dataclass unchanged, for its `__post_init__` to read (a field
whose mapping is not the shape of its type, e.g. the loop's flat fine-tuning keys)."""

FLAG_DEST = "config:"  # argparse dest prefix of the flags add_config_flags generates
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_NULL = {"null", "Null", "NULL", "~"}


class ConfigError(UserError):
    """A config problem; the message names the dotted key (`filter.min_turns`) and what is allowed."""


class _WrongType(ConfigError):
    """The value at `where` itself has the wrong type (a union tries its next member)."""


# --- checks ------------------------------------------------------------------------------------------------------

def check_choice(where: str, value: Any, choices: Any) -> None:
    """Refuse `value` unless it is one of `choices` (a collection or a `Literal[...]`); `where` names the field,
    e.g. `FinetuningArguments.task`."""
    options = get_args(choices) if get_origin(choices) is Literal else tuple(choices)
    if value not in options or (isinstance(value, bool) and not any(o is value for o in options)):
        shown = ", ".join("''" if o == "" else str(o) for o in options)
        raise ConfigError(f"{where}={value!r} is not valid; choose one of: {shown}")


def unknown_key(where: str, key: Any, allowed: Iterable[str], see: str = "--help") -> ConfigError:
    """The error for a key no field has: its dotted path, the closest allowed key and the allowed keys (past 40 of
    them, where to `see` them)."""
    allowed = list(allowed)
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    listing = ", ".join(allowed) if len(allowed) <= 40 else f"{len(allowed)} keys: {see} lists them"
    return ConfigError(f"unknown key '{_join(where, key)}'{hint} (allowed: {listing})")


# --- binding -----------------------------------------------------------------------------------------------------

def bind(cls: type[T], data: Any, where: str = "") -> T:
    """`cls(**data)` with every key and value checked against the dataclass's fields; `where` is the dotted path
    of `data` in the whole config (errors name `where.key`)."""
    return cls(**field_values(cls, data, where))


def field_values(cls: type, data: Any, where: str = "") -> dict[str, Any]:
    """The keyword arguments `bind` passes to `cls`: keys checked, values converted to the field types."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise unknown_key(where, key, fields)
    missing = [name for name, f in fields.items() if name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where or cls.__name__}: missing required key(s) {', '.join(missing)}")
    hints = type_hints(cls)
    values = {}
    for key, value in data.items():
        raw = fields[key].metadata.get("raw_mapping") and isinstance(value, Mapping)
        values[key] = dict(value) if raw else convert(hints[key], value, _join(where, key))
    return values


def convert(tp: Any, value: Any, where: str) -> Any:
    """`value` as type `tp`, or a ConfigError naming `where`. Ints are accepted for floats."""
    origin = get_origin(tp)
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _WrongType(f"{where}: expected a mapping of keys, got {type(value).__name__}")
        return bind(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(tp, value, where)
    if origin is Literal:
        check_choice(where, value, tp)
        return value
    if tp is type(None):
        if value is not None:
            raise _WrongType(f"{where} must be null, got {type(value).__name__} {value!r}")
        return None
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise _WrongType(f"{where} must be a list, got {type(value).__name__} {value!r}")
        item = (get_args(tp) or (Any,))[0]
        return [convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise _WrongType(f"{where} must be a mapping, got {type(value).__name__} {value!r}")
        item = (get_args(tp) or (Any, Any))[1]
        return {k: convert(item, v, _join(where, k)) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        check_choice(where, value, [m.value for m in tp])
        return tp(value)
    if tp is float and not isinstance(value, bool) and isinstance(value, int):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string
    wrong = not isinstance(value, tp) if isinstance(tp, type) else False
    if tp is int and isinstance(value, bool):
        wrong = True
    if wrong:
        raise _WrongType(f"{where} must be {type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _convert_union(tp: Any, value: Any, where: str) -> Any:
    members = get_args(tp)
    if value is None and type(None) in members:
        return None
    errors = []
    for member in (m for m in members if m is not type(None)):
        try:
            return convert(member, value, where)
        except ConfigError as err:
            errors.append(err)
    deeper = [e for e in errors if not isinstance(e, _WrongType)]
    if deeper:
        raise deeper[0]
    raise _WrongType(f"{where} must be {type_name(tp)}, got {type(value).__name__} {value!r}")


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def type_name(tp: Any) -> str:
    """A field type as a user reads it: `int or null`, `list[str]`, `{inc,openvino,gguf}`."""
    origin = get_origin(tp)
    if tp is Any:
        return "any"
    if tp is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if origin is Literal:
        return "{" + ",".join(str(a) for a in get_args(tp)) + "}"
    if tp is list or origin is list:
        return f"list[{type_name(get_args(tp)[0])}]" if get_args(tp) else "list"
    if tp is dict or origin is dict:
        return "mapping"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "{" + ",".join(str(m.value) for m in tp) + "}"
    return getattr(tp, "__name__", str(tp))


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


# --- overrides and files -----------------------------------------------------------------------------------------

def parse_override(text: str) -> tuple[list[str], Any]:
    """`filter.min_turns=2` -> (['filter', 'min_turns'], 2); the value is read as YAML, like the file."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. filter.min_turns=2")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({err})") from None
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set `data[keys[0]][keys[1]]... = value`, creating sections; the sections on the path are copied first."""
    node = data
    for i, k in enumerate(keys[:-1]):
        child = node.get(k)
        if child is None:
            child = {}
        if not isinstance(child, Mapping):
            raise ConfigError(f"override {'.'.join(keys)}: {'.'.join(keys[:i + 1])} is not a section")
        node[k] = dict(child)
        node = node[k]
    node[keys[-1]] = value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str | tuple[list[str], Any]]) -> dict[str, Any]:
    """A copy of `data` with each override (`a.b=value` text, or (keys, value)) applied in order."""
    out = dict(data)
    for item in overrides:
        apply_override(out, *(parse_override(item) if isinstance(item, str) else item))
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML (or JSON) config file holds; an empty file is {}."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable = (),
                values: Mapping[str, Any] | None = None, build: Callable[[dict], T] | None = None) -> T:
    """`cls` from a YAML file (if any), then `values` (top-level keys replacing the file's), then `overrides`
    (`a.b=value` or (keys, value)); errors of the file name it. `build` reads the mapping (default: `bind`)."""
    data = read_yaml(path) if path else {}
    data.update(values or {})
    try:
        data = apply_overrides(data, overrides)
        return build(data) if build else bind(cls, data)
    except ConfigError as err:
        if path:
            raise ConfigError(f"{path}: {err}") from None
        raise


# --- documentation -----------------------------------------------------------------------------------------------

@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's attribute docstring (the string literal right under it), own or inherited; a field without
    one falls back to `field(metadata={"help": ...})`, which is how transformers documents its dataclasses."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_class_docstrings(klass))
    for f in dataclasses.fields(cls):
        if f.name not in docs and f.metadata.get("help"):
            docs[f.name] = " ".join(str(f.metadata["help"]).split())
    return docs


def _class_docstrings(klass: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError, SyntaxError):  # no source (built in a REPL or by exec)
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    name: str
    """Dotted path: `limits.max_queue`."""
    type: Any
    default: Any
    """dataclasses.MISSING for a required field."""
    doc: str


def describe_fields(cls: type, prefix: str = "", instance: Any = None) -> list[FieldInfo]:
    """Every settable field of `cls`, nested dataclasses (also `X | None`) flattened to dotted names, with type,
    default and doc; a RAW_MAPPING field is one mapping."""
    hints, docs = type_hints(cls), field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = getattr(instance, f.name) if instance is not None else _declared_default(f)
        nested = _section_type(hints[f.name])
        if f.metadata.get("raw_mapping"):
            out.append(FieldInfo(prefix + f.name, dict, default, docs.get(f.name, "")))
        elif nested is not None:
            out += describe_fields(nested, f"{prefix}{f.name}.", default if isinstance(default, nested) else None)
        else:
            out.append(FieldInfo(prefix + f.name, hints[f.name], default, docs.get(f.name, "")))
    return out


def _section_type(tp: Any) -> type | None:
    """The dataclass of a nested section (`Limits`, or `QuantizeConfig | None`), else None."""
    members = [m for m in _members(tp) if m is not type(None)]
    return members[0] if len(members) == 1 and dataclasses.is_dataclass(members[0]) else None


def _declared_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _help(info: FieldInfo) -> str:
    text = f"{info.doc} " if info.doc else ""
    return f"{text}({_type_and_default(info)})".replace("%", "%%")


def _type_and_default(info: FieldInfo) -> str:
    default = "required" if info.default is dataclasses.MISSING else f"default: {_show(info.default)}"
    return f"{type_name(info.type)}; {default}"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, enum.Enum):
        return str(value.value)
    return repr(value) if isinstance(value, str) and (value == "" or value.strip() != value) else str(value)


def fields_help(cls: type, width: int = 100) -> str:
    """Every field of `cls`, `name (type; default)` and its docstring under it, each nested section headed by its
    own docstring: the --help of a `key=value` command line."""
    lines, section = [], ""
    for info in describe_fields(cls):
        parent = info.name.rpartition(".")[0]
        if parent != section and parent:
            lines += textwrap.wrap(f"{parent}: {_section_doc(cls, parent) or ''}", width, initial_indent="  ",
                                   subsequent_indent=" " * 6)
        section = parent
        lines.append(f"  {info.name} ({_type_and_default(info)})")
        if info.doc:
            lines += textwrap.wrap(info.doc, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


# --- command lines -----------------------------------------------------------------------------------------------

def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, aliases: Mapping[str, Sequence[str]] | None = None,
                     required: Iterable[str] = (), skip: Iterable[str] = (), overrides: bool = True) -> None:
    """A flag per field of `cls` (nested dataclasses: `--limits.max_queue`), spelled with `-` or `_`, its help the
    field's docstring, type and default; values are read like YAML. A bool flag alone means true (`--sym`), takes
    a value (`--sym false`), and has a `--no-` form. Unless `overrides=False`, trailing `a.b=value` arguments
    override any field too. `config_overrides(args)` collects what was given, for `load_config`."""
    required, skip, aliases = set(required), set(skip), aliases or {}
    groups: dict[str, Any] = {"": parser}  # a nested section's flags go in a group headed by its docstring
    for info in describe_fields(cls):
        if info.name in skip:
            continue
        section = info.name.rpartition(".")[0]
        if section not in groups:
            groups[section] = parser.add_argument_group(section, _section_doc(cls, section))
        names = list(dict.fromkeys([f"--{info.name.replace('_', '-')}", f"--{info.name}", *aliases.get(info.name, ())]))
        kind = _flag_kind(info.type)
        kwargs: dict[str, Any] = {"dest": FLAG_DEST + info.name, "default": argparse.SUPPRESS, "help": _help(info),
                                  "metavar": _metavar(info.type)}
        if info.name in required:
            kwargs["required"] = True
        if kind == "bool":
            kwargs.update(nargs="?", const=True, type=_flag_bool, metavar="BOOL")
            kwargs["help"] = kwargs["help"][:-1] + f"; {names[0]} alone: true, --no-{names[0][2:]}: false)"
        elif kind == "list":
            item = next(get_args(a)[0] for a in _members(info.type) if get_origin(a) is list and get_args(a))
            kwargs.update(nargs="+", type=_flag_reader(item), metavar=_metavar(item))
        else:
            kwargs["type"] = _flag_reader(info.type)
        groups[section].add_argument(*names, **kwargs)
        if kind == "bool":
            groups[section].add_argument(*[f"--no-{n[2:]}" for n in names[:2]], dest=FLAG_DEST + info.name,
                                action="store_const", const=False, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    if overrides:
        parser.add_argument("overrides", nargs="*", metavar="key=value", default=[],
                            help="override any field, the value read as YAML (e.g. a.b=3); flags win")


def _section_doc(cls: type, section: str) -> str | None:
    *parents, name = section.split(".")
    for parent in parents:
        cls = _section_type(type_hints(cls)[parent])
    return field_docs(cls).get(name)


def config_overrides(args: argparse.Namespace) -> list[tuple[list[str], Any]]:
    """The `a.b=value` arguments and the generated flags of a parsed command line, as (keys, value) overrides."""
    found = [parse_override(text) for text in getattr(args, "overrides", None) or []]
    found += [(dest[len(FLAG_DEST):].split("."), value) for dest, value in vars(args).items()
              if dest.startswith(FLAG_DEST)]
    return found


def _metavar(tp: Any) -> str:
    return "|".join(type_name(m) if get_origin(m) is Literal else type_name(m).upper() for m in _members(tp))


def _members(tp: Any) -> tuple:
    return get_args(tp) if get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


def _flag_kind(tp: Any) -> str:
    members = [m for m in _members(tp) if m is not type(None)]
    if members == [bool]:
        return "bool"
    if any(get_origin(m) is list and get_args(m) for m in members):
        return "list"
    return "value"


def _flag_bool(text: str) -> bool:
    value = _yaml(text)
    if not isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r} (a key=value override goes before "
                                         "a bool flag given alone)")
    return value


def _flag_reader(tp: Any) -> Callable[[str], Any]:
    """Text of a flag -> value: kept as text where the field takes text (a path stays a path), else read as YAML."""
    members = _members(tp)
    takes_text = str in members or any(get_origin(m) is Literal and all(isinstance(a, str) for a in get_args(m))
                                       for m in members)
    optional = type(None) in members

    def read(text: str) -> Any:
        if optional and text in _NULL:
            return None
        return text if takes_text else _yaml(text)

    read.__name__ = type_name(tp)  # argparse names it in "invalid ... value"
    return read


def _yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"not a YAML value: {text!r}") from None
