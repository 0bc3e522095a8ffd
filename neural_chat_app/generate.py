"""One reply from messages: prompt, backend stream, stop strings, optional stats table. Used by chatbot and server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from neural_chat_app.config import GenerationConfig
from neural_chat_app.prompts import prompt_ids, resolve_task
from neural_chat_app.reasoning import opened_by_prompt, raw_reply, thinking_format
from neural_chat_app.stats import stats_table
from neural_chat_app.streaming import Backend, StreamResult, apply_stop_strings


def generate_stream(
    backend: Backend,
    messages: list[dict],
    config: GenerationConfig,
    task: str = "",
    cancel: threading.Event | None = None,
    result: StreamResult | None = None,
    ids: list[int] | None = None,
) -> Iterator[str]:
    """Yield the reply's raw text chunks; `result` (if given) ends up with token counts and timings. A prompt that
    opened a reasoning block (Qwen 3.5 thinking) has its opener first, so the text says where the reasoning is
    (reasoning.raw_reply); `task` "text" continues the text as given."""
    cancel = cancel or threading.Event()
    result = result if result is not None else StreamResult()
    task = resolve_task(config.task or task, backend.tokenizer)
    if ids is None:
        ids = prompt_ids(backend.tokenizer, messages, task, thinking=config.thinking)
    fmt = thinking_format(backend.tokenizer) if task != "text" else None
    opener = opened_by_prompt(backend.tokenizer, ids, fmt) if fmt is not None else ""
    result.opener_chars = len(opener)
    chunks = apply_stop_strings(backend.stream(ids, config, result, cancel), config.stop, cancel)
    yield from raw_reply(chunks, opener)
    if config.return_stats:
        yield stats_table(result)
