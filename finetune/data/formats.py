"""Detect a record's format from its keys and convert it to a `Conversation`.

One JSON object per record; the format is read from the record itself, so one file (or one folder) can mix
OpenAI/ChatML `messages`, ShareGPT `conversations`, Alpaca `instruction`/`input`/`output` and `prompt`/`response`.
"""

from __future__ import annotations

import re
from typing import Any

from finetune.data.records import ROLES, Conversation, Reject
from finetune.errors import UserError

# ShareGPT dumps name the speakers after the product that produced them; all of these mean one of our roles.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}

# A JSON "\\ud83d" escape without its pair decodes to a lone surrogate, which no UTF-8 file can hold.
_SURROGATE = re.compile("[\ud800-\udfff]")

# The keys that identify each format; the first match wins, so the order settles records that carry several.
FORMAT_KEYS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_response": ("prompt", "response"),
}


class FormatError(UserError):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def detect_format(record: dict[str, Any]) -> str | None:
    for name, keys in FORMAT_KEYS.items():
        if all(k in record for k in keys):
            return name
    return None


def to_conversation(record: Any, origin: str) -> Conversation | Reject:
    """Convert one parsed record; anything malformed becomes a `Reject` naming the field at fault."""
    if not isinstance(record, dict):
        return Reject("ingest", "not_an_object", f"a record must be a JSON object, got {type(record).__name__}",
                      origin, record)
    fmt = detect_format(record)
    if fmt is None:
        known = ", ".join("+".join(keys) for keys in FORMAT_KEYS.values())
        return Reject("ingest", "unknown_format",
                      f"no known format in keys {sorted(record)[:8]}; expected one of: {known}", origin, record)
    try:
        messages = _CONVERTERS[fmt](record)
        metadata = _metadata(record, FORMAT_KEYS[fmt] + _EXTRA_KEYS[fmt])
    except FormatError as e:
        return Reject("ingest", e.code, f"{fmt}: {e.detail}", origin, record)
    return Conversation(messages=messages, metadata=metadata, origin=origin, format=fmt, raw=record)


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        if not value.isascii() and _SURROGATE.search(value):
            raise FormatError("invalid_unicode", f"{where} holds a lone surrogate (a broken \\u escape)")
        return value
    # OpenAI's content-parts form: a list of {"type": "text", "text": ...}; only text parts can be trained on.
    if isinstance(value, list) and value and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return _text("".join(_text(p.get("text"), where) for p in value), where)
    raise FormatError("wrong_type", f"{where} must be a string, got {type(value).__name__}")


def _message(role: Any, content: Any, where: str) -> dict[str, str]:
    if role not in ROLES:
        raise FormatError("bad_role", f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}")
    return {"role": role, "content": _text(content, f"{where}.content")}


def _system(record: dict[str, Any]) -> list[dict[str, str]]:
    system = record.get("system")
    return [] if system in (None, "") else [{"role": "system", "content": _text(system, "system")}]


def _from_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    turns = record["messages"]
    if not isinstance(turns, list) or not turns:
        raise FormatError("wrong_type", "messages must be a non-empty list")
    out = []
    for i, m in enumerate(turns):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise FormatError("missing_field", f"messages[{i}] needs both role and content")
        out.append(_message(m["role"], m["content"], f"messages[{i}]"))
    return out


def _from_sharegpt(record: dict[str, Any]) -> list[dict[str, str]]:
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns:
        raise FormatError("wrong_type", "conversations must be a non-empty list")
    out = _system(record)
    for i, m in enumerate(turns):
        if not isinstance(m, dict) or "from" not in m or "value" not in m:
            raise FormatError("missing_field", f"conversations[{i}] needs both from and value")
        speaker = m["from"]
        role = SHAREGPT_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise FormatError("bad_role", f"conversations[{i}].from is {speaker!r}; expected one of "
                                          f"{', '.join(SHAREGPT_ROLES)}")
        out.append(_message(role, m["value"], f"conversations[{i}]"))
    return out


def _from_alpaca(record: dict[str, Any]) -> list[dict[str, str]]:
    instruction = _text(record["instruction"], "instruction")
    context = _text(record.get("input") or "", "input")
    prompt = f"{instruction}\n\n{context}" if context.strip() else instruction
    return _system(record) + [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": _text(record["output"], "output")},
    ]


def _from_prompt_response(record: dict[str, Any]) -> list[dict[str, str]]:
    return _system(record) + [
        {"role": "user", "content": _text(record["prompt"], "prompt")},
        {"role": "assistant", "content": _text(record["response"], "response")},
    ]


def _metadata(record: dict[str, Any], format_keys: tuple[str, ...]) -> dict[str, Any]:
    """The record's `metadata` object plus its other top-level keys (an `id`, a `source`), so nothing is lost."""
    meta = record.get("metadata", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise FormatError("wrong_type", f"metadata must be an object, got {type(meta).__name__}")
    extra = {k: v for k, v in record.items() if k not in format_keys and k != "metadata"}
    return {**extra, **meta}


_CONVERTERS = {
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "prompt_response": _from_prompt_response,
}
# Keys each converter consumes besides the ones that identify the format; they do not go into metadata.
_EXTRA_KEYS: dict[str, tuple[str, ...]] = {
    "messages": (),
    "sharegpt": ("system",),
    "alpaca": ("input", "system"),
    "prompt_response": ("system",),
}
