"""OpenAI tools (function calling) in serving: `tool_choice` into a constraint, and tool calls out of the reply as it
streams. The tools go into the prompt as finetune.tool_calls renders them, and replies are read in every family's
own format by finetune.tool_call_formats: the same code as fine-tuning and evaluation use.

- `tool_choice: "required"` or a named function: decoding is constrained to a JSON tool call (the JSON-schema
  mask of structured.py) whose arguments match the function's parameters, so the call is valid even from a model
  that has never seen a tool; `"auto"`: the model decides, and its reply is parsed.
- Streaming: text before a call is sent as it comes, the call held back and parsed at the end.
"""

from __future__ import annotations

from finetune.tool_call_formats import CALL_OPENERS, CLOSERS, GEMMA_QUOTE, Offered, first_opener, parse_tool_calls

__all__ = ["ToolCallSplitter", "forced_call_schema", "marker_tokens", "parse_tool_calls"]


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


class ToolCallSplitter:
    """Streaming with tools: passes plain text through as it comes and holds back what may be a tool call, which
    `finish` parses. A reply that opens like a call (`{`, `[`, a call opener) is held to its end; one that does not
    streams, minus any tail that may begin a call opener, which (once seen) holds the rest."""

    def __init__(self, names: Offered, parallel: bool = True):
        self.names, self.parallel = names, parallel
        self.held = ""
        self.mode = "undecided"  # -> "content" | "call"

    def feed(self, chunk: str) -> str:
        self.held += chunk
        if self.mode == "undecided":
            start = self.held.lstrip()
            if not start:
                return ""
            if start[0] in "{[" or start.startswith(CALL_OPENERS):
                self.mode = "call"
            elif any(o.startswith(start) for o in CALL_OPENERS):
                return ""  # may still become an opener
            else:
                self.mode = "content"
        if self.mode == "call":
            return ""
        at = first_opener(self.held)
        if at is not None:
            out, self.held, self.mode = self.held[:at], self.held[at:], "call"
            return out
        keep = max((n for o in CALL_OPENERS for n in range(len(o) - 1, 0, -1) if self.held.endswith(o[:n])),
                   default=0)
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


def marker_tokens(tokenizer) -> dict[int, str]:
    """The special tokens that open, close or quote a call in the model's format (Ministral's [TOOL_CALLS] and
    [ARGS], Gemma 4's <|tool_call>, <|"|> and <tool_call|>): decoding skips special tokens, so the detokenizer
    writes these itself, where the template renders tools."""
    from finetune.tool_calls import template_renders_tools

    if not template_renders_tools(tokenizer):
        return {}
    wanted = {*CALL_OPENERS, *CLOSERS.values(), GEMMA_QUOTE, "[ARGS]", "[CALL_ID]"}
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {i: t.content for i, t in decoder.items() if getattr(t, "special", False) and t.content in wanted}
