"""Request bodies of the Ollama-compatible endpoints (pydantic), the fields and options they honour, and their
mapping to GenerationConfig.

Ollama's server ignores what it does not know; this one refuses, with a 400 naming each field or option it does
not honour, so that a client never believes a setting took effect when it did not. An option set to the value
that turns it off (mirostat 0, typical_p 1, ...) is what this server does anyway, and is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from neural_chat_app.config import GenerationConfig
from neural_chat_app.server.errors import APIError
from neural_chat_app.server.schemas import Tool

# Options honoured: temperature, top_p, top_k, seed, stop, presence_penalty, frequency_penalty -> the same
# GenerationConfig fields; num_predict -> max_new_tokens (-1: up to the server's max_tokens limit); repeat_penalty
# -> repetition_penalty (over the whole context, as repeat_last_n=-1 does); num_ctx -> a bound on prompt + reply (a
# longer prompt is refused, never cut).
HONOURED_OPTIONS = ("temperature", "top_p", "top_k", "num_predict", "seed", "stop", "repeat_penalty", "num_ctx",
                    "presence_penalty", "frequency_penalty")
# Options accepted only at the value that turns them off.
NEUTRAL_OPTIONS = {
    "mirostat": 0,
    "min_p": 0,
    "tfs_z": 1,
    "typical_p": 1,
    "repeat_last_n": -1,
}
_WHY = {
    "repeat_last_n": "repeat_penalty applies to the whole context (repeat_last_n=-1) here",
    "num_thread": "the server's thread count is set when it starts (OMP_NUM_THREADS)",
    "num_gpu": "this server runs on the CPU",
    "main_gpu": "this server runs on the CPU",
    "low_vram": "this server runs on the CPU",
}
# Ollama's names for the GenerationConfig fields, for error messages.
_OPTION_OF_FIELD = {"repetition_penalty": "repeat_penalty", "max_new_tokens": "num_predict"}


def bare_model_name(name: str | None) -> str | None:
    """Ollama's names carry a tag; ':latest' is the untagged name ('smollm2:latest' -> 'smollm2')."""
    if name and name.endswith(":latest"):
        return name[: -len(":latest")]
    return name


def _is_zero_duration(value) -> bool:
    """keep_alive 0 ('0', '0s', '0m', 0): unload the model at once."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return value == 0
    return re.fullmatch(r"0+(\.0*)?(ns|us|µs|ms|s|m|h)?", str(value).strip().lower()) is not None


class _OllamaBody(BaseModel):
    # Unknown fields are kept here so that `unsupported()` can refuse them by name.
    model_config = ConfigDict(extra="allow")

    def unsupported(self) -> list[str]:
        return [f"{name} (not a field this server knows)" for name in sorted(self.model_extra or {})]


def refuse(problems: list[str]) -> None:
    """One 400 listing every field or option the request sets that this server does not honour."""
    if problems:
        raise APIError(400, "Not supported by this server: " + "; ".join(problems), "unsupported_field")


class _GenerateBase(_OllamaBody):
    model: str = ""
    stream: bool | None = True  # Ollama streams unless told not to; null is its default too
    format: str | dict | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def unsupported(self) -> list[str]:
        problems = super().unsupported()
        if self.think is not None and not isinstance(self.think, bool):
            problems.append(f"think={self.think!r} (levels are for gpt-oss, which this server does not run; send "
                            f"true or false)")
        if self.keep_alive is not None and _is_zero_duration(self.keep_alive):
            problems.append("keep_alive=0 (this server keeps its model loaded; any other duration is accepted)")
        for name, value in (self.options or {}).items():
            if value is None or name in HONOURED_OPTIONS:
                continue
            if name in NEUTRAL_OPTIONS and not isinstance(value, bool) and value == NEUTRAL_OPTIONS[name]:
                continue
            why = _WHY.get(name, "not implemented")
            off = f"; only {NEUTRAL_OPTIONS[name]} is accepted" if name in NEUTRAL_OPTIONS else ""
            problems.append(f"options.{name} ({why}{off})")
        if self.format not in (None, "", "json") and not isinstance(self.format, dict):
            problems.append(f"format={self.format!r} (format takes 'json' or a JSON schema object)")
        return problems

    @property
    def top_logprobs_wanted(self) -> int | None:
        """GenerationConfig.logprobs: how many alternatives per token, or None for no log-probabilities."""
        top = self.top_logprobs or 0
        if isinstance(top, bool) or not 0 <= top <= 20:
            raise APIError(400, f"top_logprobs must be between 0 and 20, got {top!r}", "invalid_value")
        if top and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "invalid_value")
        return top if self.logprobs else None

    def option(self, name: str):
        return (self.options or {}).get(name)

    @property
    def num_ctx(self) -> int | None:
        value = self.option("num_ctx")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise APIError(400, f"options.num_ctx must be a positive integer, got {value!r}", "invalid_value")
        return value

    def response_format(self) -> dict | None:
        if self.format in (None, ""):
            return None
        if self.format == "json":
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": self.format}}

    def generation_config(self, max_tokens_limit: int) -> GenerationConfig:
        defaults = GenerationConfig()
        num_predict = self.option("num_predict")
        if num_predict is None:
            max_new = min(defaults.max_new_tokens, max_tokens_limit)
        elif num_predict == -1:
            max_new = max_tokens_limit
        elif isinstance(num_predict, bool) or not isinstance(num_predict, int) or num_predict < 1:
            raise APIError(400, f"options.num_predict must be -1 (up to this server's limit of {max_tokens_limit}) "
                                f"or a positive integer, got {num_predict!r}", "invalid_value")
        elif num_predict > max_tokens_limit:
            raise APIError(400, f"options.num_predict={num_predict} is above this server's limit of "
                                f"{max_tokens_limit}", "invalid_value")
        else:
            max_new = num_predict
        stop = self.option("stop")
        values = {
            "temperature": self.option("temperature"),
            "top_p": self.option("top_p"),
            "top_k": self.option("top_k"),
            "repetition_penalty": self.option("repeat_penalty"),
            "seed": self.option("seed"),
            "presence_penalty": self.option("presence_penalty"),
            "frequency_penalty": self.option("frequency_penalty"),
        }
        try:
            return GenerationConfig(
                **{k: v for k, v in values.items() if v is not None},
                max_new_tokens=max_new,
                stop=[stop] if isinstance(stop, str) else list(stop or []),
                response_format=self.response_format(),
                logprobs=self.top_logprobs_wanted,
                thinking=self.think if isinstance(self.think, bool) else None,
            )
        except (TypeError, ValueError) as err:
            message = str(err)
            for field, option in _OPTION_OF_FIELD.items():
                message = message.replace(f"GenerationConfig.{field}", f"options.{option}")
            message = message.replace("GenerationConfig.", "options.").replace("response_format", "format")
            raise APIError(400, message, "invalid_value") from err


class OllamaFunctionCall(BaseModel):
    name: str
    arguments: dict[str, Any] | str = {}
    index: int | None = None  # newer Ollama numbers the calls of a message


class OllamaToolCall(BaseModel):
    function: OllamaFunctionCall
    id: str | None = None


class OllamaMessage(_OllamaBody):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None  # a tool message: which function's result it is
    tool_call_id: str | None = None  # newer Ollama: the id of the call it answers (the id its reply gave the call)
    thinking: str | None = None

    def as_dict(self, index: int) -> dict:
        """The message as generation_routes._prepare takes it (OpenAI's tool call shape)."""
        out = {"role": self.role, "content": self.content or ""}
        if self.tool_calls:
            out["tool_calls"] = [{"id": c.id or f"call_{index}_{i}", "type": "function",
                                  "function": {"name": c.function.name, "arguments": c.function.arguments}}
                                 for i, c in enumerate(self.tool_calls)]
        if self.role == "tool":  # matched to its call by id, else the calls in order (finetune.tool_calls)
            out["tool_call_id"] = self.tool_call_id or self.tool_name or ""
        if self.thinking and self.role == "assistant":
            out["reasoning_content"] = self.thinking  # the thinking templates read it (Qwen 3, Gemma 4)
        return out

    def unsupported(self, where: str) -> list[str]:
        problems = [f"{where}.{p}" for p in super().unsupported()]
        if self.tool_calls and self.role != "assistant":
            problems.append(f"{where}.tool_calls (only assistant messages carry tool calls)")
        if self.images:
            problems.append(f"{where}.images (the models here read text only)")
        if self.thinking and self.role != "assistant":
            problems.append(f"{where}.thinking (only assistant messages carry thinking)")
        if self.tool_call_id and self.role != "tool":
            problems.append(f"{where}.tool_call_id (only tool results answer a call)")
        return problems


class ChatRequest(_GenerateBase):
    messages: list[OllamaMessage] = []
    tools: list[Tool] | None = Field(None, max_length=128)  # OpenAI's shape, which Ollama's is

    @property
    def tool_dicts(self) -> list[dict] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None

    @property
    def tool_parameters(self) -> dict[str, dict]:
        """The offered functions: name -> its parameters schema (which types the values of some formats' calls)."""
        return {t.function.name: t.function.parameters or {} for t in self.tools or []}

    def unsupported(self) -> list[str]:
        problems = super().unsupported()
        for i, message in enumerate(self.messages):
            problems += message.unsupported(f"messages.{i}")
        return problems


class GenerateRequest(_GenerateBase):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[str] | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None

    def unsupported(self) -> list[str]:
        problems = super().unsupported()
        if self.suffix:
            problems.append("suffix (fill-in-the-middle is not supported)")
        if self.template:
            problems.append("template (the model's own chat template is used; send raw=true to give the whole "
                            "prompt yourself)")
        if self.context:
            problems.append("context (no token context is kept between requests: use /api/chat with messages)")
        if self.images:
            problems.append("images (the models here read text only)")
        for name in ("width", "height", "steps"):
            if getattr(self, name) is not None:
                problems.append(f"{name} (image generation is not supported)")
        if self.raw and self.system:
            problems.append("system with raw=true (a raw prompt is used as given: put the system text in it)")
        return problems


class ShowRequest(_OllamaBody):
    model: str = ""
    name: str = ""  # the older spelling of `model`
    verbose: bool = False

    def unsupported(self) -> list[str]:
        problems = super().unsupported()
        if self.verbose:
            problems.append("verbose (model_info never holds the tokenizer's arrays here)")
        return problems


class _EmbedBase(_OllamaBody):
    model: str = ""
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None

    def unsupported(self) -> list[str]:
        problems = super().unsupported()
        problems += [f"options.{k} (the embedding model takes no options)" for k, v in (self.options or {}).items()
                     if v is not None]
        if self.keep_alive is not None and _is_zero_duration(self.keep_alive):
            problems.append("keep_alive=0 (this server keeps the embedding model loaded)")
        return problems


class EmbedRequest(_EmbedBase):
    """/api/embed: one text or a list. `truncate` (default true) cuts an input longer than the model takes; false
    refuses it."""

    input: str | list[str] = ""
    truncate: bool = True
    dimensions: int | None = None


class EmbeddingsRequest(_EmbedBase):
    """The older /api/embeddings: one `prompt`, one `embedding` back."""

    prompt: str = ""


@dataclass
class TurnRequest:
    """What generation_routes._prepare reads from a request: the model, the conversation, the sampling."""

    model: str | None
    conversation_id: str | None
    generation_config: Callable[[int], GenerationConfig]
