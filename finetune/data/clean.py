"""The clean stage: normalize and redact every message of a conversation."""

from __future__ import annotations

from collections import Counter

from finetune.data.config import CleanConfig
from finetune.data.normalize import normalize_text
from finetune.data.records import Conversation, Reject
from finetune.data.redact import redact
from finetune.data.timing import StageClock


def clean_conversation(conv: Conversation, cfg: CleanConfig, redactions: Counter,
                       clock: StageClock | None = None) -> Conversation | Reject:
    messages = []
    for i, m in enumerate(conv.messages):
        text = normalize_text(m["content"]) if cfg.normalize else m["content"]
        if clock is not None:
            clock.lap("normalize")
        text = redact(text, cfg.redact, cfg.phone_region, redactions)
        if clock is not None:
            clock.lap("redact")
        if not text.strip():
            # An empty turn teaches nothing and breaks role alternation; say which one it was.
            return Reject("clean", "empty_message", f"message {i} ({m['role']}) is empty after cleaning",
                          conv.origin, conv.raw)
        messages.append({"role": m["role"], "content": text})
    conv.messages = messages
    return conv
