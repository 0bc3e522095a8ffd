"""One reply from messages: prompt, backend stream, stop strings, optional stats table. Used by chatbot and server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from neural_chat_app.config import GenerationConfig
from neural_chat_app.prompts import prompt_ids
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
    """Yield the reply's text chunks; `result` (if given) ends up with token counts and timings."""
    cancel = cancel or threading.Event()
    result = result if result is not None else StreamResult()
    ids = ids if ids is not None else prompt_ids(backend.tokenizer, messages, config.task or task)
    yield from apply_stop_strings(backend.stream(ids, config, result, cancel), config.stop, cancel)
    if config.return_stats:
        yield stats_table(result)
