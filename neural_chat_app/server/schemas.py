"""Request bodies of the OpenAI-compatible endpoints (pydantic), and their mapping to GenerationConfig."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from neural_chat_app.config import GenerationConfig
from neural_chat_app.server.errors import APIError


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart]

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        # "developer" is the newer OpenAI name of the system role.
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    # Unknown OpenAI fields (logprobs, presence_penalty, ...) are accepted and ignored, as other servers do.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    user: str | None = None
    # Extensions: which logged conversation this turn belongs to, and NeuralChat's extra knobs.
    conversation_id: str | None = Field(None, max_length=128)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    # OpenAI's {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}} or {"type": "json_object"}
    response_format: dict | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop
        if stops is not None and (len(stops) > 4 or not all(stops)):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, value):
        from neural_chat_app.structured import json_schema_of

        json_schema_of(value)  # a ValueError becomes a 400 naming the field
        return value

    def generation_config(self, max_tokens_limit: int) -> GenerationConfig:
        if self.max_tokens is not None and self.max_tokens > max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens={self.max_tokens} is above this server's limit of {max_tokens_limit}",
                None,
                "max_tokens",
            )
        defaults = GenerationConfig()
        return GenerationConfig(
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            repetition_penalty=self.repetition_penalty or defaults.repetition_penalty,
            max_new_tokens=min(self.max_tokens or defaults.max_new_tokens, max_tokens_limit),
            stop=list(self.stop or []),
            seed=self.seed,
            response_format=self.response_format,
        )


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt):
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ValueError("exactly one prompt is supported")
            return prompt[0]
        return prompt


class FeedbackRequest(BaseModel):
    feedback: Literal[1, -1] | None


class SwitchRequest(BaseModel):
    model: str
