"""A conversation with tool calls (OpenAI's shape: `tools` definitions, assistant `tool_calls`, `tool` results), as a
model's chat template renders it: what serving prompts with and what fine-tuning learns from, so the two agree.

What differs between the templates users bring (tests/fixtures/chat_templates/):
- Qwen 2.5/3/3.5, Llama 3.x, Mistral, Gemma 4 and Ministral 3 take `tools=` and render calls and results in their
  own format. The calls' arguments go in as a mapping: the templates write `arguments | tojson` (OpenAI sends a
  JSON string).
- Mistral v0.3's template raises unless every call id is 9 letters or digits (OpenAI's are `call_` + 24), and
  Gemma 4's names a result by the id of its call: ids are filled in and made to fit, the results following them.
- Phi-4-mini's template takes the tools as a JSON string on the system message and renders no calls: a call goes
  into the reply's text as Phi-4-mini writes it, `functools[...]`.
- A template without tools (the embedded SmolLM2, Gemma 2/3, Phi-3) gets them described in the system message in
  the Hermes format (the one Qwen uses), calls as `<tool_call>` text, results as user turns: the model is told
  what it can call either way.
"""

from __future__ import annotations

import hashlib
import json

TAG_OPEN, TAG_CLOSE = "<tool_call>", "</tool_call>"
PHI_CALLS = "functools"

HERMES_SYSTEM = (
    "You may call one or more functions to assist with the user query. The functions you can call are listed "
    "in <tools></tools>:\n<tools>\n{tools}\n</tools>\nTo call a function, reply with a JSON object holding its "
    "name and arguments inside <tool_call></tool_call> tags, one per call:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def template_renders_tools(tokenizer) -> bool:
    from finetune.chat_template import template_text

    return "tools" in template_text(tokenizer)


def _tools_on_system_message(template: str) -> bool:
    """Phi-4-mini's convention: `{"role": "system", "content": ..., "tools": "<JSON>"}`."""
    return "message['tools']" in template or 'message["tools"]' in template or "message.tools" in template


def has_tool_parts(messages: list[dict], tools: list[dict] | None = None) -> bool:
    return bool(tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def tool_messages(messages: list[dict], tools: list[dict] | None, tokenizer) -> tuple[list[dict], list | None]:
    """(messages, tools) to render with the tokenizer's template (module docstring): unchanged where there is no
    tool part; else in the form this template renders."""
    if not has_tool_parts(messages, tools):
        return messages, None
    from finetune.chat_template import template_text

    template = template_text(tokenizer)
    messages = _with_ids([_with_dict_arguments(m) for m in messages], nine=".id|length != 9" in template
                         or "length 9" in template)
    if "tools" in template and _tools_on_system_message(template):
        return _phi_messages(messages, tools), None
    if "tools" in template:
        return messages, tools or None
    return _hermes_messages(messages, tools), None


def rendered_conversation(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The whole conversation as the chat template renders it for training, its tools and calls included."""
    from finetune.chat_template import render_chat

    messages, tools = tool_messages(messages, tools, tokenizer)
    return render_chat(tokenizer, messages, tokenize=False, **({"tools": tools} if tools else {}))


def call_body(call: dict) -> dict:
    """{"name", "arguments"} of an OpenAI call, the arguments a mapping where they parse."""
    arguments = call["function"].get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            pass
    return {"name": call["function"]["name"], "arguments": arguments}


def _with_dict_arguments(message: dict) -> dict:
    """Templates write `arguments | tojson`: OpenAI's arguments are a JSON string, theirs a mapping."""
    if not message.get("tool_calls"):
        return message
    calls = [{**call, "function": {**call["function"], "arguments": call_body(call)["arguments"]}}
             for call in message["tool_calls"]]
    return {**message, "tool_calls": calls}


def _fitted_id(call_id: str | None, nine: bool, where: str) -> str:
    if call_id and (not nine or (len(call_id) == 9 and call_id.isalnum())):
        return call_id
    digest = hashlib.sha1((call_id or where).encode()).hexdigest()
    return digest[:9] if nine else "call_" + digest[:24]


def _with_ids(messages: list[dict], nine: bool) -> list[dict]:
    """Every call with an id (9 letters or digits where the template demands it, Mistral v0.3's), the same for one
    call id everywhere, and every tool result with the id of its call: the one it names, else the calls in order
    (Ollama's clients send results without ids)."""
    out, pending, fitted = [], [], {}
    for i, m in enumerate(messages):
        if m.get("tool_calls"):
            calls = []
            for j, call in enumerate(m["tool_calls"]):
                new = _fitted_id(call.get("id"), nine, f"{i}.{j}")
                fitted[call.get("id") or new] = new
                calls.append({**call, "id": new})
            pending = [c["id"] for c in calls]
            out.append({**m, "tool_calls": calls})
        elif m.get("role") == "tool":
            named = m.get("tool_call_id")
            new = fitted.get(named) if named else None
            if new is None:
                new = pending[0] if pending else _fitted_id(named, nine, f"{i}")
            if new in pending:
                pending.remove(new)
            out.append({**m, "tool_call_id": new})
        else:
            out.append(m)
    return out


def _phi_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Phi-4-mini: the function definitions as a JSON string on the system message, calls as its text."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = json.dumps([call_body(c) for c in m["tool_calls"]], ensure_ascii=False)
            out.append({"role": "assistant", "content": ((m.get("content") or "") + PHI_CALLS + calls).strip()})
        else:
            out.append(m)
    if tools:
        described = json.dumps([t.get("function", t) for t in tools], ensure_ascii=False)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "tools": described}
        else:
            out.insert(0, {"role": "system", "content": "", "tools": described})
    return out


def _hermes_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    out: list[dict] = []
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "user", "content": f"Result of the tool call {m.get('tool_call_id', '')}:\n"
                                                   f"{m['content']}"})
        elif m.get("tool_calls"):
            calls = "\n".join(f"{TAG_OPEN}\n{json.dumps(call_body(c), ensure_ascii=False)}\n{TAG_CLOSE}"
                              for c in m["tool_calls"])
            out.append({"role": "assistant", "content": ((m.get("content") or "") + "\n" + calls).strip()})
        else:
            out.append({k: v for k, v in m.items() if k in ("role", "content", "reasoning_content")})
    if tools:
        described = HERMES_SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + described}
        else:
            out.insert(0, {"role": "system", "content": described})
    return out
