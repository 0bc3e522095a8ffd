"""Find the input files and read each one record by record, whatever its encoding, line endings or container.

A file's kind is read from its first bytes, not its name: SQLite's magic header, a JSON array (`[`), or
JSON Lines. Lines are read as bytes and decoded one at a time, so one bad line is one reject, not a dead run.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune.data.chatlog import SQLITE_MAGIC, read_chatlog
from finetune.data.formats import to_conversation
from finetune.data.json_stream import JsonArrayError, iter_json_array
from finetune.data.records import Conversation, Reject

BOM = b"\xef\xbb\xbf"


def discover(paths: list[str], include: list[str]) -> tuple[list[Path], list[Path]]:
    """Files to read (sorted, so runs are reproducible) and the files of the folders that matched no pattern."""
    files, skipped = [], []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                (files if any(fnmatch.fnmatch(f.name, pat) for pat in include) else skipped).append(f)
        else:
            raise FileNotFoundError(f"ingest.paths: {p} does not exist (working directory {Path.cwd()})")
    return files, skipped


def sniff(path: Path) -> str:
    """`sqlite`, `json_array` or `jsonl`, from the first bytes of the file."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    return "json_array" if head.removeprefix(BOM).lstrip().startswith(b"[") else "jsonl"


def read_source(path: Path) -> Iterator[Conversation | Reject]:
    kind = sniff(path)
    if kind == "sqlite":
        yield from read_chatlog(path)
    elif kind == "json_array":
        yield from _read_json_array(path)
    else:
        yield from _read_jsonl(path)


def _read_jsonl(path: Path) -> Iterator[Conversation | Reject]:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno == 1:
                line = line.removeprefix(BOM)
            complete = line.endswith(b"\n")
            line = line.rstrip(b"\r\n")  # CRLF and LF alike
            if not line.strip():
                continue  # a blank line is not a record
            yield _parse_line(line, complete, f"{path}:{lineno}")


def read_jsonl_range(path: str, offset: int, length: int, first_line: int
                     ) -> Iterator[tuple[Conversation | Reject, int, int]]:
    """`_read_jsonl` on the whole lines in bytes [offset, offset + length) of a file, whose first is line
    `first_line`: yields `(record, byte offset of its line, its length)`, the same records with the same origins."""
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), length, offset)
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()  # the range ends with a newline
    last, at = len(lines) - 1, offset
    for k, line in enumerate(lines):
        lineno = first_line + k
        size = len(line)
        if lineno == 1:
            line = line.removeprefix(BOM)
        stripped = line.rstrip(b"\r\n")
        if stripped.strip():
            yield _parse_line(stripped, k < last or data.endswith(b"\n"), f"{path}:{lineno}"), at, size
        at += size + 1


def load_line(path: str, at: int, size: int) -> Any:
    """The record on the line that `read_jsonl_range` gave as (at, size), parsed again (it parsed before)."""
    with open(path, "rb") as f:
        line = os.pread(f.fileno(), size, at)
    line = (line.removeprefix(BOM) if at == 0 else line).rstrip(b"\r\n")
    orjson = _orjson(line)
    if orjson is not None:
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
    return json.loads(line.decode("utf-8"))


# bytes.translate: digits to "0", everything else to " ", so a run of 19 digits is a substring search.
_DIGITS_TO_ZERO = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_NUMBER = b"0" * 19


def _orjson(line: bytes):
    """orjson for this line, or None for json's parser. orjson (the data extra) reads a line of chat log in about
    60% of json's time. It turns integers past 64 bits into floats; a line with a run of 19 or more digits
    (which may be one) goes to json."""
    orjson = _import_orjson()
    if orjson is None or _LONG_NUMBER in line.translate(_DIGITS_TO_ZERO):
        return None
    return orjson


@functools.cache
def _import_orjson():
    try:
        import orjson
    except ImportError:
        return None
    return orjson


def _parse_line(line: bytes, complete: bool, origin: str) -> Conversation | Reject:
    orjson = _orjson(line)
    if orjson is not None:
        # orjson is strict (valid UTF-8, no lone surrogate escapes, no NaN or infinity): what it accepts, json
        # reads to the same objects; for anything else json decides, so rejects and their messages do not change.
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
        else:
            return to_conversation(record, origin)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return Reject("ingest", "invalid_utf8", f"invalid UTF-8 at byte {e.start} of the line", origin,
                      line.decode("utf-8", "backslashreplace"))
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        if not complete:
            return Reject("ingest", "truncated_line", f"last line has no newline and is cut off ({e.msg})",
                          origin, text)
        return Reject("ingest", "invalid_json", f"invalid JSON ({e.msg} at column {e.colno})", origin, text)
    return to_conversation(record, origin)


def _read_json_array(path: Path) -> Iterator[Conversation | Reject]:
    # surrogateescape keeps invalid bytes as lone surrogates, so a bad element is found and rejected by itself.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        try:
            for line, element in iter_json_array(f):
                origin = f"{path}:{line}"
                if _has_surrogates(element):
                    yield Reject("ingest", "invalid_utf8", "invalid UTF-8 inside this element", origin,
                                 _mend(element))
                else:
                    yield to_conversation(element, origin)
        except JsonArrayError as e:
            yield Reject("ingest", "invalid_json", f"{e.detail}; the rest of the array cannot be read",
                         f"{path}:{e.line}", None)


def _has_surrogates(value) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= c <= "\udcff" for c in value)
    if isinstance(value, dict):
        return any(_has_surrogates(k) or _has_surrogates(v) for k, v in value.items())
    if isinstance(value, list):
        return any(map(_has_surrogates, value))
    return False


def _mend(value):
    """The element with its invalid bytes shown as `\\xNN`, so the reject can be written as UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {_mend(k): _mend(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mend(v) for v in value]
    return value
