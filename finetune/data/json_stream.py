"""Stream the elements of a top-level JSON array (an Alpaca `.json` file) without loading the file.

`json.JSONDecoder.raw_decode` parses one element at a time from a sliding text buffer, so memory holds one
element plus a 64 KiB chunk, and each element's starting line is known for error messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, TextIO

from finetune.errors import UserError

CHUNK = 1 << 16
MAX_ELEMENT_CHARS = 64 << 20  # past this an element is taken as broken JSON, not one huge record
_WS = re.compile(r"\s*")
_DECODER = json.JSONDecoder()


class JsonArrayError(UserError):
    def __init__(self, line: int, detail: str):
        super().__init__(f"line {line}: {detail}")
        self.line = line
        self.detail = detail


class _Buffer:
    def __init__(self, f: TextIO):
        self.f, self.buf, self.pos, self.line, self.eof = f, "", 0, 1, False

    def fill(self) -> bool:
        data = self.f.read(CHUNK)
        if not data:
            self.eof = True
            return False
        self.buf = self.buf[self.pos :] + data  # drop what was consumed: the buffer never holds the whole file
        self.pos = 0
        return True

    def advance(self, end: int) -> None:
        self.line += self.buf.count("\n", self.pos, end)
        self.pos = end

    def peek(self) -> str | None:
        while True:
            self.advance(_WS.match(self.buf, self.pos).end())
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return None

    def value(self) -> tuple[Any, int]:
        self.peek()  # raw_decode does not skip leading whitespace
        start_line = self.line
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if len(self.buf) - self.pos > MAX_ELEMENT_CHARS or not self.fill():
                    raise JsonArrayError(start_line, f"invalid JSON ({e.msg})") from e
                continue
            # A number or literal that ends exactly at the buffer's end may continue in the next chunk.
            if end == len(self.buf) and not self.eof and self.fill():
                continue
            self.advance(end)
            return obj, start_line


def iter_json_array(f: TextIO) -> Iterator[tuple[int, Any]]:
    """Yield `(line, element)`; raise `JsonArrayError` (after the good elements) where the array breaks."""
    buf = _Buffer(f)
    if buf.peek() != "[":
        raise JsonArrayError(buf.line, "expected a JSON array starting with '['")
    buf.advance(buf.pos + 1)
    if buf.peek() == "]":
        return
    while True:
        obj, line = buf.value()
        yield line, obj
        sep = buf.peek()
        if sep == "]":
            return
        if sep != ",":
            what = "end of file (truncated array)" if sep is None else repr(sep)
            raise JsonArrayError(buf.line, f"expected ',' or ']' after an element, got {what}")
        buf.advance(buf.pos + 1)
