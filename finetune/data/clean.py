"""The clean stage: normalize and redact every message of a conversation, or every text of a preference record."""

from __future__ import annotations

from collections import Counter

from finetune.data.config import CleanConfig
from finetune.data.normalize import normalize_text
from finetune.data.records import Conversation, Preference, Reject
from finetune.data.redact import redact
from finetune.data.timing import StageClock


def clean_text(text: str, cfg: CleanConfig, redactions: Counter, clock: StageClock | None = None) -> str:
    text = normalize_text(text) if cfg.normalize else text
    if clock is not None:
        clock.lap("normalize")
    text = redact(text, cfg.redact, cfg.phone_region, redactions)
    if clock is not None:
        clock.lap("redact")
    return text


def clean_conversation(conv: Conversation, cfg: CleanConfig, redactions: Counter,
                       clock: StageClock | None = None) -> Conversation | Reject:
    # Every message normalized, then each redacted in turn up to an empty one: the same texts and counts as
    # clean_text message by message, with two stage laps per conversation instead of two per message.
    texts = [normalize_text(m["content"]) for m in conv.messages] if cfg.normalize else \
        [m["content"] for m in conv.messages]
    if clock is not None:
        clock.lap("normalize")
    messages = []
    for i, (m, text) in enumerate(zip(conv.messages, texts)):
        text = redact(text, cfg.redact, cfg.phone_region, redactions)
        if not text.strip() and not m.get("tool_calls"):  # a reply that only calls a tool has no text
            if clock is not None:
                clock.lap("redact")
            # An empty turn teaches nothing and breaks role alternation; say which one it was.
            return Reject("clean", "empty_message", f"message {i} ({m['role']}) is empty after cleaning",
                          conv.origin, conv.raw)
        messages.append(_with_parts_cleaned(m, text, cfg, redactions))
    if clock is not None:
        clock.lap("redact")
    conv.messages = messages
    return conv


def _with_parts_cleaned(m: dict, text: str, cfg: CleanConfig, redactions: Counter) -> dict:
    """The message with its cleaned text, its reasoning cleaned and its calls' arguments redacted."""
    cleaned = {**m, "content": text}
    if m.get("reasoning_content"):
        cleaned["reasoning_content"] = clean_text(m["reasoning_content"], cfg, redactions)
    if m.get("tool_calls") and cfg.redact:  # personal data in a call's arguments is personal data too
        cleaned["tool_calls"] = [_redacted_call(c, cfg, redactions) for c in m["tool_calls"]]
    return cleaned


def _redacted_call(call: dict, cfg: CleanConfig, redactions: Counter) -> dict:
    """The call with every string in its arguments redacted; the arguments keep their form (a JSON string or an
    object)."""
    import json

    def walk(value):
        if isinstance(value, str):
            return redact(value, cfg.redact, cfg.phone_region, redactions)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return [walk(v) for v in value] if isinstance(value, list) else value

    function = dict(call["function"])
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.dumps(walk(json.loads(arguments or "{}")), ensure_ascii=False)
        except ValueError:
            function["arguments"] = walk(arguments)
    else:
        function["arguments"] = walk(arguments)
    return {**call, "function": function}


def clean_preference(pref: Preference, cfg: CleanConfig, redactions: Counter,
                     clock: StageClock | None = None) -> Preference | Reject:
    """Every text, prompt and replies alike: personal data in a rejected reply is still personal data."""
    cleaned: dict[str, list[dict[str, str]]] = {"prompt": []}
    for part, i, m in pref.texts():
        text = clean_text(m["content"], cfg, redactions, clock)
        if not text.strip() and not m.get("tool_calls"):
            return Reject("clean", "empty_message", f"{part} message {i} ({m['role']}) is empty after cleaning",
                          pref.origin, pref.raw)
        if pref.plain:
            text = _keep_join(m["content"], text, part)
        cleaned.setdefault(part, []).append(_with_parts_cleaned(m, text, cfg, redactions))
    pref.prompt = cleaned.pop("prompt")
    pref.replies = cleaned
    if pref.label is None and cleaned["chosen"] == cleaned["rejected"]:
        return Reject("clean", "same_replies", "chosen and rejected are the same reply after cleaning",
                      pref.origin, pref.raw)
    return pref


def _keep_join(original: str, text: str, part: str) -> str:
    """TRL joins a plain prompt and reply as they are: the space between them (at the end of the prompt or the
    start of the reply, as in 'Answer:' + ' Paris') is part of the text, so normalization must not strip it."""
    if part == "prompt":
        return text + original[len(original.rstrip()):]
    return original[: len(original) - len(original.lstrip())] + text
