"""`build_chatbot` and the chatbot it returns: NeuralChat's predict / predict_stream / chat API."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from neural_chat_app.config import GenerationConfig, PipelineConfig
from neural_chat_app.generate import generate_stream
from neural_chat_app.reasoning import answer_chunks, split_reasoning, thinking_format
from neural_chat_app.stats import stats_table
from neural_chat_app.streaming import Backend, StreamResult

logger = logging.getLogger(__name__)


class ChatBot:
    """A loaded backend plus per-conversation history. Stateless `predict*`, stateful `chat*`."""

    def __init__(self, backend: Backend, config: PipelineConfig, plugins=None):
        self.backend = backend
        self.config = config
        self.plugins = plugins  # a plugins.pipeline.PluginPipeline (retrieval, safety checker) or None
        self.system_prompt: str | None = config.system_prompt
        self.conversations: dict[str, list[dict]] = {}

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def _messages(self, history: list[dict], query: str) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, *history, {"role": "user", "content": query}]

    def _check(self, query) -> None:
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query must be a non-empty string, got {query!r}")

    def _raw_reply(self, messages: list[dict], config: GenerationConfig, result: StreamResult):
        """(raw reply chunks, links): the plugins' refusal, or the model's reply through their filter."""
        prepared = self.plugins.prepare(messages) if self.plugins is not None else None
        if prepared is not None and prepared.refusal is not None:
            return iter([prepared.refusal]), prepared.links
        source = prepared.messages if prepared is not None else messages
        # Stats go after the answer, not into the raw reply (a reply cut short while thinking is all reasoning).
        chunks = generate_stream(self.backend, source, _no_stats(config), self.config.task, result=result)
        if self.plugins is not None:
            chunks = self.plugins.filter_reply(chunks)
        return chunks, (prepared.links if prepared is not None else [])

    def predict_stream(
        self, query: str, config: GenerationConfig | None = None, response_format: dict | None = None
    ) -> tuple[Iterator[str], list]:
        """Return (generator of text chunks, links); links are retrieval sources, [] without retrieval.

        `response_format` (a JSON Schema, or OpenAI's {"type": "json_schema", ...}) forces the reply to be JSON
        matching it; it overrides config.response_format. A thinking model's reasoning is not in the chunks:
        they are its answer (predict_with_reasoning returns both).
        """
        self._check(query)
        config = _with_format(config or GenerationConfig(), response_format)
        result = StreamResult()
        chunks, links = self._raw_reply(self._messages([], query), config, result)
        fmt = thinking_format(self.backend.tokenizer)

        def run():
            yield from answer_chunks(chunks, fmt)
            if config.return_stats:
                yield stats_table(result)

        return run(), links

    def predict(self, query: str, config: GenerationConfig | None = None, response_format: dict | None = None) -> str:
        chunks, _ = self.predict_stream(query, config, response_format)
        return "".join(chunks)

    def predict_with_reasoning(self, query: str, config: GenerationConfig | None = None) -> tuple[str, str]:
        """(reasoning, answer) of one reply: a thinking model's reasoning ("" for a model that does not think, or
        with thinking off) and its answer."""
        self._check(query)
        chunks, _ = self._raw_reply(self._messages([], query), config or GenerationConfig(), StreamResult())
        return split_reasoning("".join(chunks), thinking_format(self.backend.tokenizer))

    def chat_stream(
        self, query: str, config: GenerationConfig | None = None, conversation_id: str = "default"
    ) -> tuple[Iterator[str], list]:
        """Like predict_stream, with the conversation's earlier turns; the reply joins the history when done."""
        self._check(query)
        history = self.conversations.setdefault(conversation_id, [])
        config = config or GenerationConfig()
        result = StreamResult()
        chunks, links = self._raw_reply(self._messages(history, query), config, result)
        fmt = thinking_format(self.backend.tokenizer)

        def run():
            parts: list[str] = []
            for chunk in answer_chunks(chunks, fmt):
                parts.append(chunk)
                yield chunk
            history.extend([{"role": "user", "content": query}, {"role": "assistant", "content": "".join(parts)}])
            if config.return_stats:
                yield stats_table(result)

        return run(), links

    def chat(self, query: str, config: GenerationConfig | None = None, conversation_id: str = "default") -> str:
        chunks, _ = self.chat_stream(query, config, conversation_id)
        return "".join(chunks)

    def reset_conversation(self, conversation_id: str = "default") -> None:
        self.conversations.pop(conversation_id, None)

    def set_customized_system_prompts(self, system_prompts: str | None, model_path: str | None = None) -> None:
        """Use `system_prompts` as the system message of every later reply (None: the model's default)."""
        if system_prompts is not None and not isinstance(system_prompts, str):
            raise TypeError(f"system_prompts must be a string or None, got {type(system_prompts).__name__}")
        self.system_prompt = system_prompts or None

    def close(self) -> None:
        self.backend.close()
        if self.plugins is not None:
            self.plugins.close()


def _with_format(config: GenerationConfig, response_format: dict | None) -> GenerationConfig:
    from dataclasses import replace

    return config if response_format is None else replace(config, response_format=response_format)


def _no_stats(config: GenerationConfig) -> GenerationConfig:
    from dataclasses import replace

    return replace(config, return_stats=False) if config.return_stats else config


def build_chatbot(config: PipelineConfig | None = None) -> ChatBot:
    """Load the model `config` names (the embedded SmolLM2-135M-Instruct by default). Raises on any error."""
    from neural_chat_app.loading import load_backend
    from neural_chat_app.plugins import build_plugin_pipeline, resolve_plugins

    config = config or PipelineConfig()
    if not isinstance(config, PipelineConfig):
        raise TypeError(f"build_chatbot takes a PipelineConfig, got {type(config).__name__}")
    # Plugins enabled in the global `plugins` registry (NeuralChat's way) or in config.plugins; built first so
    # that a bad document folder fails before the model loads.
    plugin_pipeline = build_plugin_pipeline(resolve_plugins(config.plugins))
    return ChatBot(load_backend(config), config, plugin_pipeline)
