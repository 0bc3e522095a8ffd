"""The two things that flow through the pipeline: a `Conversation` that is still in, or a `Reject` that is out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune.errors import UserError

ROLES = ("system", "user", "assistant")


class SourceError(UserError):
    """A whole input file cannot be read as data (e.g. an SQLite file that is not the conversation log)."""


@dataclass
class Conversation:
    """One conversation in the common shape every ingest format is converted to."""

    messages: list[dict[str, str]]
    """`[{"role": "system|user|assistant", "content": "..."}]`, in order."""
    metadata: dict[str, Any]
    origin: str
    """Where it came from, `file:line` (or `file.db#session=<id>` for the conversation log)."""
    format: str = ""
    """The format it was read from: messages, sharegpt, alpaca, prompt_response or chatlog."""
    raw: Any = None
    """The record as read, kept so a later stage can write the original into rejects.jsonl."""
    n_tokens: int | None = None
    """Set by the token-length filter when a tokenizer is configured."""


@dataclass
class Reject:
    """A record that left the pipeline, with the stage and reason a user needs to find and fix it."""

    stage: str
    """ingest, clean, filter or dedup."""
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
