"""What every backend shares: the per-request record, the Backend protocol, and stop-string handling."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from neural_chat_app.config import GenerationConfig


@dataclass
class StreamResult:
    """Filled in by a backend while it streams: counts and timings for usage, stats and metrics."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length" | "cancelled"
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    tokens: list | None = None  # logits.TokenLogprob per reply token, when GenerationConfig.logprobs asks
    emitted_chars: int = 0  # characters the backend produced, before stop strings cut any
    opener_chars: int = 0  # characters of the reasoning opener the prompt wrote, put before the backend's text

    def mark_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    @property
    def first_token_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def total_s(self) -> float:
        return (self.finished_at or time.perf_counter()) - self.started

    @property
    def decode_tokens_per_s(self) -> float:
        if self.first_token_at is None or self.completion_tokens < 2:
            return 0.0
        decode_s = (self.finished_at or time.perf_counter()) - self.first_token_at
        return (self.completion_tokens - 1) / decode_s if decode_s > 0 else 0.0


class Detokenizer:
    """Token ids to text, one token at a time: each step decodes a short window (the tokens since the last emitted
    text plus those just before it, for word-boundary spaces) and emits what is new. A window that ends inside a
    UTF-8 character decodes to U+FFFD: that text waits for the next token. Special tokens are skipped, except those
    that write a thinking model's reasoning markers (Gemma 4's <|channel>) or its tool calls (Ministral's
    [TOOL_CALLS]), which the reply needs to be split and parsed."""

    def __init__(self, tokenizer):
        from neural_chat_app import reasoning, tools

        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0  # tokens before this were emitted
        self.markers = {**reasoning.marker_tokens(tokenizer), **tools.marker_tokens(tokenizer)}

    def add(self, token: int) -> str:
        decode = self.tokenizer.decode
        if token in self.markers:  # what is pending, then the marker; the next window starts after it
            pending = decode(self.ids[self.prefix :], skip_special_tokens=True)
            before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
            self.ids.append(token)
            self.prefix = self.read = len(self.ids)
            return pending[len(before) :].replace("\ufffd", "") + self.markers[token]
        self.ids.append(token)
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        text = decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before) :]


class Backend(Protocol):
    """A loaded model that streams text. Implementations: TorchBackend, OpenVINOBackend."""

    kind: str
    # what it can do beyond streaming text: "logprobs" (GenerationConfig.logprobs), "logit_bias", "echo" (score
    # a prompt: a `prompt_logprobs(ids, top)` method); the server refuses a request field that needs a missing one
    features: frozenset[str]
    model_id: str
    tokenizer: object  # a transformers tokenizer: chat template and token counts
    max_concurrency: int  # streams it runs at once with a gain (batching); the server admits this many

    def stream(
        self, prompt_ids: list[int], config: GenerationConfig, result: StreamResult, cancel: threading.Event
    ) -> Iterator[str]: ...

    def close(self) -> None: ...


def apply_stop_strings(chunks: Iterator[str], stops: list[str], cancel: threading.Event) -> Iterator[str]:
    """Yield text up to (not including) the first stop string, holding back any tail that may start one.

    When a stop string is found, `cancel` is set so the backend stops generating, and the source is closed.
    """
    if not stops:
        yield from chunks
        return
    longest = max(len(s) for s in stops)
    pending = ""
    try:
        for chunk in chunks:
            pending += chunk
            hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
            if hits:
                cancel.set()
                if min(hits):
                    yield pending[: min(hits)]
                return
            # Keep only what could still be the start of a stop string.
            safe = len(pending) - (longest - 1)
            if safe > 0:
                yield pending[:safe]
                pending = pending[safe:]
        if pending:
            yield pending
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
