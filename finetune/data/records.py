"""What flows through the pipeline: a `Conversation` or a `Preference` that is still in, or a `Reject` that is out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune.errors import UserError

ROLES = ("system", "user", "assistant", "tool")


class SourceError(UserError):
    """A whole input file cannot be read as data (e.g. an SQLite file that is not the conversation log)."""


@dataclass
class Conversation:
    """One conversation in the common shape every ingest format is converted to."""

    messages: list[dict[str, Any]]
    """`[{"role": "system|user|assistant|tool", "content": "..."}]`, in order; an assistant message may hold
    `tool_calls` and a tool result its `tool_call_id` (OpenAI's shape)."""
    metadata: dict[str, Any]
    origin: str
    """Where it came from, `file:line` (or `file.db#session=<id>` for the conversation log)."""
    format: str = ""
    """The format it was read from: messages, sharegpt, alpaca, prompt_response or chatlog."""
    raw: Any = None
    """The record as read, kept so a later stage can write the original into rejects.jsonl."""
    n_tokens: int | None = None
    """Set by the token-length filter when a tokenizer is configured."""
    tools: list[dict] | None = None
    """The functions the conversation could call (OpenAI's definitions), written out beside its messages."""

    @property
    def has_tool_parts(self) -> bool:
        return bool(self.tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in self.messages)


@dataclass
class Preference:
    """One preference example (TRL's DPO pair or KTO unpaired reply) in a shape every stage understands: the prompt
    as messages, and each reply as messages under its role, so plain and conversational records are one type."""

    prompt: list[dict[str, str]]
    """The conversation before the replies (a plain-text prompt is one user message); may end on a user turn only."""
    replies: dict[str, list[dict[str, str]]]
    """`{"chosen": [...], "rejected": [...]}` for a pair, `{"completion": [...]}` for KTO; each starts with an
    assistant message (a plain-text reply is one)."""
    label: bool | None
    """KTO's label (True: a good reply); None for a pair."""
    plain: bool
    """Read from plain strings: written back as strings (TRL reads a file as all text or all conversations)."""
    metadata: dict[str, Any]
    origin: str
    format: str = ""
    """dpo, dpo_implicit (no prompt: the shared first turns of chosen and rejected) or kto."""
    raw: Any = None
    n_tokens: int | None = None
    """The longest prompt + reply, set by the token-length filter."""
    tools: list[dict] | None = None
    """The functions the conversation could call (OpenAI's definitions), written out beside the prompt."""

    def views(self) -> list[Conversation]:
        """Prompt + each reply as a `Conversation`: what the filters check, as each is one sequence TRL trains on."""
        return [Conversation(self.prompt + reply, self.metadata, self.origin, self.format, self.raw, tools=self.tools)
                for reply in self.replies.values()]

    def texts(self) -> list[tuple[str, int, dict[str, str]]]:
        """`(part, index, message)` for every message: the prompt's, then each reply's."""
        parts = [("prompt", self.prompt), *self.replies.items()]
        return [(part, i, m) for part, messages in parts for i, m in enumerate(messages)]


@dataclass
class Reject:
    """A record that left the pipeline, with the stage and reason a user needs to find and fix it."""

    stage: str
    """ingest, clean, filter, dedup or export."""
    code: str
    """A short stable reason, the key of the counts in stats.json, e.g. `min_turns`."""
    detail: str
    """The full sentence for a human, e.g. `1 assistant turn, fewer than min_turns=2`."""
    origin: str
    record: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return f"{self.stage}.{self.code}"

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "reason": self.reason, "detail": self.detail, "record": self.record,
                **self.extra}
