"""OpenAI tools (function calling): the tools into the prompt, `tool_choice` into a constraint, tool calls out of
the reply.

- Prompt: a chat template that renders tools (Qwen 2.5/3, Llama 3.1+, Mistral, Phi-4-mini, SmolLM3 ...) gets them
  as `tools=`, with assistant tool calls and `tool` results in its own format. A template without tool support
  (the embedded SmolLM2, Gemma) gets them described in the system message in the Hermes format (the one Qwen
  uses), and tool results as user turns: the model is told what it can call either way.
- `tool_choice: "required"` or a named function: decoding is constrained to a JSON tool call (the JSON-schema
  mask of structured.py) whose arguments match the function's parameters, so the call is valid even from a model
  that has never seen a tool; `"auto"`: the model decides, and its reply is parsed.
- Parsing covers the formats the families write: `<tool_call>{...}</tool_call>` (Qwen, Hermes, SmolLM3), a bare
  JSON call or list of calls (Llama 3.x's `{"name", "parameters"}`, Mistral's `[TOOL_CALLS][...]` and Phi-4's
  `<|tool_call|>[...]` once their special tokens are stripped), `<|python_tag|>` before a call.
"""

from __future__ import annotations

import json
import re
import uuid

TAG_OPEN, TAG_CLOSE = "<tool_call>", "</tool_call>"
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_PREFIXES = ("<|python_tag|>", "[TOOL_CALLS]")

HERMES_SYSTEM = (
    "You may call one or more functions to assist with the user query. The functions you can call are listed "
    "in <tools></tools>:\n<tools>\n{tools}\n</tools>\nTo call a function, reply with a JSON object holding its "
    "name and arguments inside <tool_call></tool_call> tags, one per call:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def template_renders_tools(tokenizer) -> bool:
    from finetune.chat_template import template_text

    return "tools" in template_text(tokenizer)


def prompt_messages(messages: list[dict], tools: list[dict] | None, tokenizer) -> tuple[list[dict], list | None]:
    """(messages, tools) to render: unchanged for a template that renders tools; folded into plain turns (tools in
    the system message, calls as the assistant's text, results as user turns) for one that does not."""
    messages = [_with_dict_arguments(m) for m in messages]
    needs_folding = tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    if not needs_folding or template_renders_tools(tokenizer):
        return messages, tools or None
    out: list[dict] = []
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "user", "content": f"Result of the tool call {m.get('tool_call_id', '')}:\n"
                                                   f"{m['content']}"})
        elif m.get("tool_calls"):
            calls = "\n".join(f"{TAG_OPEN}\n{json.dumps(_call_body(c))}\n{TAG_CLOSE}" for c in m["tool_calls"])
            out.append({"role": "assistant", "content": ((m.get("content") or "") + "\n" + calls).strip()})
        else:
            out.append({k: v for k, v in m.items() if k in ("role", "content")})
    if tools:
        described = HERMES_SYSTEM.format(tools="\n".join(json.dumps(t) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + described}
        else:
            out.insert(0, {"role": "system", "content": described})
    return out, None


def _with_dict_arguments(message: dict) -> dict:
    """Templates write `arguments | tojson`: OpenAI's arguments are a JSON string, theirs a mapping."""
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        function = dict(call["function"])
        if isinstance(function.get("arguments"), str):
            try:
                function["arguments"] = json.loads(function["arguments"] or "{}")
            except ValueError:
                pass
        calls.append({**call, "function": function})
    return {**message, "tool_calls": calls}


def _call_body(call: dict) -> dict:
    return {"name": call["function"]["name"], "arguments": call["function"].get("arguments", {})}


def forced_call_schema(tools: list[dict], choice, parallel: bool) -> dict | None:
    """The JSON Schema decoding must follow for `tool_choice` "required" or a named function; None otherwise."""
    if choice in (None, "auto", "none"):
        return None
    if choice == "required":
        chosen = tools
    else:
        chosen = [t for t in tools if t["function"]["name"] == choice["function"]["name"]]
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["function"]["name"]},
                "arguments": t["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    one = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if not parallel or choice != "required":
        return one
    return {"type": "array", "items": one, "minItems": 1}


def parse_tool_calls(text: str, names: set[str], parallel: bool = True) -> tuple[str | None, list[dict]]:
    """(content, tool_calls) of a reply. No call of a known function found: (text, [])."""
    if TAG_OPEN in text:
        bodies = [_json(b) for b in _TAGGED.findall(text)]
        content = text[: text.index(TAG_OPEN)].strip() or None
    else:
        stripped = text.strip()
        for prefix in _PREFIXES:
            stripped = stripped.removeprefix(prefix).strip()
        bodies = [_json(stripped)]
        content = None
    found: list[dict] = []
    for body in bodies:
        calls = _calls(body, names)
        if calls is None:
            return text, []
        found += calls
    if not found:
        return text, []
    return content, found[:1] if not parallel else found


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _calls(body, names: set[str]) -> list[dict] | None:
    """OpenAI tool calls from one parsed body (a call or a list of calls); None when it is not one."""
    items = body if isinstance(body, list) else [body]
    calls = []
    for item in items:
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


class ToolCallSplitter:
    """Streaming with tools: passes plain text through as it comes and holds back what may be a tool call, which
    `finish` parses. A reply that opens like a call (`{`, `[`, a call tag or prefix) is held to its end; one that
    does not streams, minus any tail that may begin `<tool_call>`, which (once seen) holds the rest."""

    def __init__(self, names: set[str], parallel: bool = True):
        self.names, self.parallel = names, parallel
        self.held = ""
        self.mode = "undecided"  # -> "content" | "call"

    def feed(self, chunk: str) -> str:
        self.held += chunk
        if self.mode == "undecided":
            start = self.held.lstrip()
            if not start:
                return ""
            openers = (TAG_OPEN, *_PREFIXES)
            if start[0] in "{[" or start.startswith(openers):
                self.mode = "call"
            elif any(o.startswith(start) for o in openers):
                return ""  # may still become a tag
            else:
                self.mode = "content"
        if self.mode == "call":
            return ""
        at = self.held.find(TAG_OPEN)
        if at >= 0:
            out, self.held, self.mode = self.held[:at], self.held[at:], "call"
            return out
        keep = next((n for n in range(len(TAG_OPEN) - 1, 0, -1) if self.held.endswith(TAG_OPEN[:n])), 0)
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """(text still to send as content, tool calls)."""
        held, self.held = self.held, ""
        if self.mode != "call":
            return held, []
        content, calls = parse_tool_calls(held, self.names, self.parallel)
        if not calls:
            return held, []
        return content or "", calls
