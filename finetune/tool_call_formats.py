"""Tool calls out of a reply, in each family's own format, as its published template writes a call in the history
(what the model learned to write):

- `<tool_call>{...}</tool_call>` (Qwen 2.5/3, Hermes, SmolLM3)
- `<tool_call><function=name><parameter=...>` (Qwen 3.5: the values are text, typed by the function's schema)
- a bare JSON call or list of calls (Llama 3.x's `{"name", "parameters"}`, after `<|python_tag|>` or not)
- `[TOOL_CALLS] [...]` (Mistral v0.3) and `[TOOL_CALLS]name[ARGS]{...}` (Ministral 3, Mistral Small 3.x)
- `<|tool_call>call:name{...}<tool_call|>` (Gemma 4, whose strings are quoted with `<|"|>`)
- `functools[...]` (Phi-4-mini)

Text before the first call is the reply's content. Serving parses replies with it (neural_chat_app/tools.py), and
evaluation scores the calls a tuned model writes (finetune/evaluate).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection, Mapping

from finetune.tool_calls import PHI_CALLS, TAG_CLOSE, TAG_OPEN

# Where a call starts in each format; the detokenizer keeps those that are special tokens.
CALL_OPENERS = (TAG_OPEN, "<|tool_call>", "[TOOL_CALLS]", "<|tool_call|>", PHI_CALLS + "[", "<|python_tag|>")
CLOSERS = {TAG_OPEN: TAG_CLOSE, "<|tool_call>": "<tool_call|>", "<|tool_call|>": "<|/tool_call|>"}
GEMMA_QUOTE = '<|"|>'
_DECODER = json.JSONDecoder()

Offered = Collection[str] | Mapping[str, dict]  # the offered functions' names, or name -> its parameters schema


def parse_tool_calls(text: str, names: Offered, parallel: bool = True) -> tuple[str | None, list[dict]]:
    """(content, tool_calls) of a reply. No call of an offered function found: (text, []). `names` with the
    parameters schemas types the values of Qwen 3.5's calls, which are written as plain text."""
    at = first_opener(text)
    if at is None:
        bodies, content = [_json(text.strip())], None
    else:
        bodies, content = _bodies(text[at:], names), text[:at].strip() or None
    found: list[dict] = []
    for body in bodies or [None]:
        calls = _calls(body, names)
        if calls is None:
            return text, []
        found += calls
    return content, found[:1] if not parallel else found


def first_opener(text: str) -> int | None:
    found = [i for i in (text.find(o) for o in CALL_OPENERS) if i >= 0]
    return min(found) if found else None


def _bodies(text: str, names: Offered) -> list | None:
    """The calls' bodies ({"name", "arguments"} or lists of them) in text that starts at a call opener; None where
    something there is not a call."""
    bodies, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return bodies
        opener = next((o for o in CALL_OPENERS if text.startswith(o, i)), None)
        if opener is None:
            return bodies if bodies else None  # text after the calls is not part of them
        i += len(opener)
        if opener in CLOSERS:
            end = text.find(CLOSERS[opener], i)
            inner, i = (text[i:], len(text)) if end < 0 else (text[i:end], end + len(CLOSERS[opener]))
            body = _gemma_call(inner) if opener == "<|tool_call>" else \
                _qwen_xml_call(inner, names) if inner.lstrip().startswith("<function=") else _json(inner.strip())
        elif opener == PHI_CALLS + "[":
            body, i = _json_prefix(text, i - 1)
        elif opener == "[TOOL_CALLS]" and not text[i:].lstrip().startswith(("[", "{")):
            body, i = _mistral_named_call(text, i)
        else:
            body, i = _json_prefix(text, i)
        if body is None:
            return None
        bodies.append(body)


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _json_prefix(text: str, i: int):
    """(the JSON value at text[i:], where it ends) or (None, i)."""
    while i < len(text) and text[i].isspace():
        i += 1
    try:
        return _DECODER.raw_decode(text, i)
    except ValueError:
        return None, i


def _mistral_named_call(text: str, i: int):
    """`name[ARGS]{...}`, or `name[CALL_ID]id[ARGS]{...}` (Mistral's tokenizers from v11 on)."""
    args = text.find("[ARGS]", i)
    if args < 0:
        return None, i
    name = text[i:args].split("[CALL_ID]")[0].strip()
    arguments, end = _json_prefix(text, args + len("[ARGS]"))
    return ({"name": name, "arguments": arguments} if name and arguments is not None else None), end


def _qwen_xml_call(inner: str, names: Offered) -> dict | None:
    """Qwen 3.5's `<function=name>` with one `<parameter=key>` block per argument, each value as plain text."""
    found = re.match(r"\s*<function=([^>\s]+)>(.*?)</function>", inner, re.S)  # a call cut short is no call
    if found is None:
        return None
    name = found.group(1)
    schema = names.get(name) if isinstance(names, Mapping) else None
    properties = (schema or {}).get("properties") or {}
    arguments = {}
    for key, raw in re.findall(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", found.group(2), re.S):
        arguments[key] = _typed(raw, (properties.get(key) or {}).get("type"))
    return {"name": name, "arguments": arguments}


def _typed(raw: str, kind) -> object:
    """A parameter written as text, as the JSON type its schema gives (unknown: what the text parses as)."""
    if kind == "string":
        return raw
    if kind == "boolean" and raw.strip() in ("True", "False"):  # the template's `| string` of a bool
        return raw.strip() == "True"
    value = _json(raw.strip())
    return raw if value is None or (kind is None and isinstance(value, str)) else value


def _gemma_call(inner: str) -> dict | None:
    """Gemma 4's `call:name{key:value,...}`: keys bare, strings between <|"|> quotes."""
    found = re.match(r"\s*call:([^{\s]+)", inner)
    if found is None:
        return None
    try:
        arguments, end = _gemma_value(inner, found.end())
    except (ValueError, IndexError):
        return None
    return {"name": found.group(1), "arguments": arguments} if isinstance(arguments, dict) else None


def _gemma_value(s: str, i: int) -> tuple[object, int]:
    while s[i].isspace():  # the template writes none; a model may
        i += 1
    if s.startswith(GEMMA_QUOTE, i):
        end = s.index(GEMMA_QUOTE, i + len(GEMMA_QUOTE))
        return s[i + len(GEMMA_QUOTE):end], end + len(GEMMA_QUOTE)
    if s[i] in "{[":
        closing, out, i = ("}" if s[i] == "{" else "]"), ({} if s[i] == "{" else []), i + 1
        while s[i] != closing:
            if isinstance(out, dict):
                if s.startswith(GEMMA_QUOTE, i):
                    key, i = _gemma_value(s, i)
                else:
                    colon = s.index(":", i)
                    key, i = s[i:colon], colon
                out[str(key).strip()], i = _gemma_value(s, i + 1)
            else:
                item, i = _gemma_value(s, i)
                out.append(item)
            while s[i].isspace():
                i += 1
            i += s[i] == ","
            while s[i].isspace():
                i += 1
        return out, i + 1
    end = min((j for j in (s.find(c, i) for c in ",}]") if j >= 0), default=len(s))
    raw = s[i:end].strip()
    value = _json(raw)
    return (raw if value is None else value), end


def _calls(body, names: Offered) -> list[dict] | None:
    """OpenAI tool calls from one parsed body (a call or a list of calls); None when it is not one."""
    items = body if isinstance(body, list) else [body]
    calls = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("function"), dict):
            item = item["function"]  # {"type": "function", "function": {...}}, as some Phi-4-mini replies hold
        if not isinstance(item, dict) or item.get("name") not in names:
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            arguments = _json(arguments)
        if not isinstance(arguments, dict):
            return None
        calls.append({
            "id": "call_" + uuid.uuid4().hex[:24],
            "type": "function",
            "function": {"name": item["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
        })
    return calls
