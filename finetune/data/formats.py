"""Detect a record's format from its keys and convert it to a `Conversation` (or a `Preference`).

One JSON object per record; the format is read from the record itself, so one file (or one folder) can mix
OpenAI/ChatML `messages`, ShareGPT `conversations`, Alpaca `instruction`/`input`/`output` and `prompt`/`response`,
and, for preference data, TRL's `prompt`/`chosen`/`rejected` (DPO; plain strings or lists of messages, the prompt
optional: then it is the turns chosen and rejected share) and `prompt`/`completion`/`label` (KTO).
"""

from __future__ import annotations

import json
import re
from typing import Any

from finetune.data.records import ROLES, Conversation, Preference, Reject
from finetune.errors import UserError
from finetune.records import PAIR, preference_label

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
    # LLaMA-Factory's tool-use ShareGPT (glaive_toolcall and the like): a call, then its result
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}

# A JSON "\\ud83d" escape without its pair decodes to a lone surrogate, which no UTF-8 file can hold.
_SURROGATE = re.compile("[\ud800-\udfff]")

# The keys that identify each format; the first match wins, so the order settles records that carry several.
FORMAT_KEYS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_response": ("prompt", "response"),
    "dpo": PAIR,
    "kto": ("prompt", "completion", "label"),
    # other chat apps' exports (finetune.data.chat_exports)
    "chatgpt": ("mapping", "current_node"),
    "openwebui": ("chat",),
    "claude": ("chat_messages",),
}
PREFERENCE_FORMATS = ("dpo", "kto")
CHAT_EXPORTS = ("chatgpt", "openwebui", "claude")


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


def to_conversation(record: Any, origin: str) -> Conversation | Preference | Reject:
    """Convert one parsed record; anything malformed becomes a `Reject` naming the field at fault."""
    if not isinstance(record, dict):
        return Reject("ingest", "not_an_object", f"a record must be a JSON object, got {type(record).__name__}",
                      origin, record)
    fmt = detect_format(record)
    if fmt is None:
        known = ", ".join("+".join(keys) for keys in FORMAT_KEYS.values())
        return Reject("ingest", "unknown_format",
                      f"no known format in keys {sorted(record)[:8]}; expected one of: {known}", origin, record)
    if fmt in CHAT_EXPORTS:
        from finetune.data import chat_exports

        try:
            return getattr(chat_exports, f"{fmt}_conversation")(record, origin)
        except chat_exports.ExportFormatError as e:
            return Reject("ingest", e.code, f"{fmt}: {e.detail}", origin, record)
    try:
        if fmt in PREFERENCE_FORMATS:
            return _to_preference(record, origin, fmt)
        messages = _CONVERTERS[fmt](record)
        metadata = _metadata(record, FORMAT_KEYS[fmt] + _EXTRA_KEYS[fmt])
        tools = record_tools(record) if fmt == "messages" else sharegpt_tools(record) if fmt == "sharegpt" else None
    except FormatError as e:
        return Reject("ingest", e.code, f"{fmt}: {e.detail}", origin, record)
    return Conversation(messages=messages, metadata=metadata, origin=origin, format=fmt, raw=record, tools=tools)


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


def _extra_parts(m: dict[str, Any], out: dict[str, Any], messages: list, i: int, tools) -> dict[str, Any]:
    """The message with its parts beyond role and content, as finetune.records checks them for training: an
    assistant's `tool_calls` and `reasoning_content` (a thinking model's trace), a result's `tool_call_id`."""
    from finetune.records import tool_problems

    problems = tool_problems(messages, i, tools)
    if problems:
        raise FormatError("bad_tool_call", f"messages[{i}]{problems[0]}")
    if m.get("tool_calls"):
        out["tool_calls"] = m["tool_calls"]
    reasoning = m.get("reasoning_content")
    if reasoning is not None:
        if m["role"] != "assistant" or not isinstance(reasoning, str):
            raise FormatError("wrong_type", f"messages[{i}].reasoning_content must be a string, on an assistant "
                                            f"message")
        out["reasoning_content"] = reasoning
    if m["role"] == "tool" and m.get("tool_call_id") is not None:
        out["tool_call_id"] = m["tool_call_id"]
    return out


def _system(record: dict[str, Any]) -> list[dict[str, str]]:
    system = record.get("system")
    return [] if system in (None, "") else [{"role": "system", "content": _text(system, "system")}]


def _from_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    turns = record["messages"]
    if not isinstance(turns, list) or not turns:
        raise FormatError("wrong_type", "messages must be a non-empty list")
    return _messages(turns, "messages", record_tools(record))


def _messages(value: list, where: str, tools, before: list | None = None) -> list[dict[str, Any]]:
    """`value`'s messages in the common shape, their tool parts checked against `tools` in the conversation
    `before + value`."""
    before = before or []
    context, out = before + value, []
    for i, m in enumerate(value):
        calls = isinstance(m, dict) and m.get("role") == "assistant" and bool(m.get("tool_calls"))
        if not isinstance(m, dict) or "role" not in m or ("content" not in m and not calls):
            raise FormatError("missing_field", f"{where}[{i}] needs both role and content")
        content = "" if calls and m.get("content") is None else m["content"]
        out.append(_extra_parts(m, _message(m["role"], content, f"{where}[{i}]"), context, len(before) + i, tools))
    return out


def record_tools(record: dict[str, Any]) -> list[dict] | None:
    """A record's `tools` (a list, or the JSON string of one, as datasets on the hub keep them)."""
    from finetune.records import tool_definitions

    tools, problem = tool_definitions(record.get("tools"))
    if problem:
        raise FormatError("bad_tools", problem)
    return tools


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
        if speaker.lower() == "function_call":
            calls = _sharegpt_calls(m["value"], f"conversations[{i}].value", len(out))
            if out and out[-1]["role"] == "assistant" and not out[-1].get("tool_calls"):
                out[-1]["tool_calls"] = calls  # the reply's words, then its calls: one message
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": calls})
        else:
            out.append(_message(role, m["value"], f"conversations[{i}]"))
            if role == "tool":  # the result answers the next call still unanswered before it
                answered = {x.get("tool_call_id") for x in out if x["role"] == "tool"}
                asked = [c["id"] for x in out if x.get("tool_calls") for c in x["tool_calls"]]
                out[-1]["tool_call_id"] = next((c for c in asked if c not in answered), None)
    from finetune.records import tool_problems

    tools = sharegpt_tools(record)
    for i in range(len(out)):
        problems = tool_problems(out, i, tools)
        if problems:
            raise FormatError("bad_tool_call", f"message {i}{problems[0]}")
    return out


def _sharegpt_calls(value: Any, where: str, at: int) -> list[dict]:
    """A function_call turn's value: the JSON of {"name", "arguments"}, or of a list of them (parallel calls)."""
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except ValueError as e:
        raise FormatError("bad_tool_call", f"{where} is not the JSON of a call ({e})") from None
    calls = []
    for j, call in enumerate(parsed if isinstance(parsed, list) else [parsed]):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise FormatError("bad_tool_call", f'{where} must be {{"name": ..., "arguments": {{...}}}} or a list '
                                               f"of them")
        arguments = call.get("arguments", {})
        calls.append({"id": f"call_{at}_{j}", "type": "function", "function": {
            "name": call["name"], "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    return calls


def sharegpt_tools(record: dict[str, Any]) -> list[dict] | None:
    """ShareGPT's `tools`: a JSON string of plain function definitions ({"name", "description", "parameters"}),
    each put in OpenAI's shape, which the chat templates take."""
    tools = record.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else None
        except ValueError as e:
            raise FormatError("bad_tools", f"tools is a string that is not JSON ({e})") from None
    if isinstance(tools, list):
        tools = [t if isinstance(t, dict) and "function" in t else {"type": "function", "function": t}
                 for t in tools]
    return record_tools({"tools": tools})


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
    "messages": ("tools",),
    "sharegpt": ("system", "tools"),
    "alpaca": ("input", "system"),
    "prompt_response": ("system",),
}


# --- preference records ----------------------------------------------------------------------------------------

def _to_preference(record: dict[str, Any], origin: str, fmt: str) -> Preference:
    """TRL's preference rows, checked as finetune.records checks them for training (the same label reading), so
    what the pipeline keeps `finetune_model(task="dpo"/"kto")` accepts."""
    reply_keys = PAIR if fmt == "dpo" else ("completion",)
    label = None
    if fmt == "kto":
        label = preference_label(record["label"])
        if label is None:
            raise FormatError("bad_label", f"label must be true (a good reply) or false (a bad one), "
                                           f"got {record['label']!r}")
    parts = [k for k in ("prompt", *reply_keys) if k in record]
    plain = all(isinstance(record[k], str) for k in parts)
    tools = None
    if plain:
        prompt, replies = _plain_parts(record, reply_keys)
    elif all(isinstance(record[k], list) for k in parts):
        tools = record_tools(record)
        prompt, replies = _conversational_parts(record, reply_keys, tools)
    else:
        raise FormatError("wrong_type", f"{', '.join(parts)} must all be strings or all be lists of "
                                        "{role, content} messages")
    for key, messages in replies.items():
        if not messages or not any(m["content"].strip() or m.get("tool_calls") for m in messages):
            raise FormatError("empty_reply", f"{key} is empty: there is no reply to learn from")
    if fmt == "dpo" and replies["chosen"] == replies["rejected"]:
        raise FormatError("same_replies", "chosen and rejected are the same reply, so there is nothing to prefer: "
                                          "drop the record or write the worse reply into rejected")
    consumed = FORMAT_KEYS[fmt] + (("prompt",) if plain else ("prompt", "tools"))
    return Preference(prompt=prompt, replies=replies, label=label, plain=plain, tools=tools,
                      metadata=_metadata(record, consumed), origin=origin,
                      format=fmt if "prompt" in record else "dpo_implicit", raw=record)


def _plain_parts(record: dict[str, Any], reply_keys: tuple[str, ...]):
    texts = {k: _text(record[k], k) for k in reply_keys}
    if "prompt" in record:
        prompt = _text(record["prompt"], "prompt")
    else:  # TRL's extract_prompt on text: the shared beginning, a space before the replies going to them
        a, b = texts["chosen"], texts["rejected"]
        shared = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        if shared and a[shared - 1] == " ":
            shared -= 1
        if shared == 0:
            raise FormatError("no_prompt", "chosen and rejected share no beginning, so the prompt cannot be found: "
                                           "add a 'prompt'")
        prompt, texts = a[:shared], {k: v[shared:] for k, v in texts.items()}
    return [{"role": "user", "content": prompt}], {k: [{"role": "assistant", "content": v}] for k, v in texts.items()}


def _conversational_parts(record: dict[str, Any], reply_keys: tuple[str, ...], tools):
    if "prompt" in record:
        prompt = _messages(record["prompt"], "prompt", tools)
        replies = {k: _messages(record[k], k, tools, before=record["prompt"]) for k in reply_keys}
    else:
        # the implicit prompt: the turns both conversations share
        replies = {k: _messages(record[k], k, tools) for k in reply_keys}
        a, b = replies["chosen"], replies["rejected"]
        shared = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        if shared == 0:
            raise FormatError("no_prompt", "chosen and rejected share no first turn, so the prompt cannot be "
                                           "found: add a 'prompt' (the conversation before the replies)")
        prompt, replies = a[:shared], {k: v[shared:] for k, v in replies.items()}
    if prompt and prompt[-1]["role"] == "assistant":
        raise FormatError("prompt_ends_with_assistant", "the prompt ends on an assistant turn, so the replies "
                                                        "answer nobody: end the prompt with the user's turn")
    for key, messages in replies.items():
        if messages and messages[0]["role"] != "assistant":
            raise FormatError("reply_role", f"{key} must start with the assistant's reply, not a "
                                            f"{messages[0]['role']} message")
    return prompt, replies
