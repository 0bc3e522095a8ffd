"""Request bodies of the OpenAI-compatible endpoints (pydantic), and their mapping to GenerationConfig.

Every field of OpenAI's chat completions and completions requests is either honoured or refused with a 400 that
names it: a field not declared here is refused (`extra="forbid"`), and the declared ones this server cannot do
are refused with the reason (REFUSED). The README's server section lists both.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from neural_chat_app.config import GenerationConfig
from neural_chat_app.server.errors import APIError

MAX_CHOICES = 16  # n (and best_of): each choice is one more generation on the CPU
MAX_GENERATIONS = 64  # prompts x choices in one completions request (lm-evaluation-harness batches prompts)

# Known OpenAI fields this server does not do, and what to do instead.
REFUSED = {
    "audio": "audio output is not supported: this server returns text",
    "prediction": "predicted outputs are not supported",
    "verbosity": "verbosity is not supported",
    "web_search_options": "web search is not supported",
    "functions": "the deprecated `functions` are not supported: send them as `tools`",
    "function_call": "the deprecated `function_call` is not supported: use `tool_choice`",
    "suffix": "suffix (fill-in-the-middle) is not supported",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _refuse_known(cls, data):
        if isinstance(data, dict):
            for name, reason in REFUSED.items():
                if data.get(name) is not None:
                    raise APIError(400, f"Unsupported field: {name}: {reason}", "unsupported_field", name)
        return data


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None  # an earlier reply's reasoning, as this server returned it

    @model_validator(mode="after")
    def _shape(self):
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (it may be null only on an assistant message with tool_calls)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def as_dict(self) -> dict:
        content = self.content
        text = content if isinstance(content, str) else "".join(p.text for p in content or [])
        # "developer" is the newer OpenAI name of the system role.
        out = {"role": "system" if self.role == "developer" else self.role, "content": text}
        if self.name:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.reasoning_content and self.role == "assistant":
            out["reasoning_content"] = self.reasoning_content  # the thinking templates read it (Qwen 3, Gemma 4)
        return out


class FunctionDefinition(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None  # the arguments follow `parameters` when the call is constrained (tool_choice)


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    # Identifiers and hints: recorded in the conversation log's metadata; `store: false` keeps the turn out of it.
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: Literal["auto", "default"] | None = None  # one tier here
    # Extensions: which logged conversation this turn belongs to, and NeuralChat's (and vLLM's) extra knobs.
    conversation_id: str | None = Field(None, max_length=128)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    # OpenAI's {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}} or {"type": "json_object"}
    response_format: dict | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop
        if stops is not None and (len(stops) > 4 or not all(stops)):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, bias):
        for token, value in (bias or {}).items():
            if not token.isdigit():
                raise ValueError(f"logit_bias keys are token ids, got {token!r}")
            if not -100 <= value <= 100:
                raise ValueError(f"logit_bias values are between -100 and 100, got {value} for token {token}")
        return bias

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, value):
        from neural_chat_app.structured import json_schema_of

        json_schema_of(value)  # a ValueError becomes a 400 naming the field
        return value

    @property
    def reply_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def generations(self) -> int:
        """Generations per prompt: n, or best_of on completions."""
        return self.n

    @property
    def top_logprobs_wanted(self) -> int | None:
        return None

    def generation_config(self, max_tokens_limit: int) -> GenerationConfig:
        wanted = self.reply_tokens
        name = "max_completion_tokens" if getattr(self, "max_completion_tokens", None) is not None else "max_tokens"
        if wanted is not None and wanted > max_tokens_limit:
            raise APIError(400, f"{name}={wanted} is above this server's limit of {max_tokens_limit}", None, name)
        defaults = GenerationConfig()
        return GenerationConfig(
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            repetition_penalty=self.repetition_penalty or defaults.repetition_penalty,
            # 0 is an echo-only completion (scored, nothing generated): GenerationConfig needs >= 1
            max_new_tokens=max(1, min(defaults.max_new_tokens if wanted is None else wanted, max_tokens_limit)),
            stop=list(self.stop or []),
            seed=self.seed,
            response_format=self.response_format,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias={int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
            logprobs=self.top_logprobs_wanted,
            thinking=getattr(self, "thinking", None),
        )

    @property
    def log_metadata(self) -> dict:
        fields = ("user", "safety_identifier", "prompt_cache_key", "metadata")
        return {f: getattr(self, f) for f in fields if getattr(self, f) is not None}


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    # Extension: the id of the conversation's last reply, which this one replaces (the page's "regenerate"; the
    # messages are the conversation before it). Both are logged, the old one as superseded.
    regenerate: int | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    modalities: list[Literal["text"]] | None = None  # text is all this server writes
    # A thinking model's reasoning, on or off (GenerationConfig.thinking): reasoning_effort "none" turns it off;
    # chat_template_kwargs {"enable_thinking": bool} (vLLM's field, the openai client's extra_body) switches it.
    reasoning_effort: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if self.max_tokens == 0:
            raise APIError(400, "max_tokens must be at least 1 for chat completions", "invalid_value", "max_tokens")
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise APIError(400, "max_tokens and max_completion_tokens disagree: send one (max_tokens is its old "
                                "name)", "invalid_value", "max_tokens")
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "invalid_value", "top_logprobs")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise APIError(400, "tool_choice needs tools", "invalid_value", "tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            if name not in self.tool_parameters:
                raise APIError(400, f"tool_choice names {name!r}, which is not among the tools", "invalid_value",
                               "tool_choice")
        self._check_thinking()
        if self.forces_tool_call and self.response_format is not None:
            raise APIError(400, "response_format cannot be combined with a forced tool call (tool_choice)",
                           "invalid_value", "response_format")
        return self

    def _check_thinking(self) -> None:
        if self.reasoning_effort not in (None, "none"):
            raise APIError(400, f"reasoning_effort={self.reasoning_effort!r} is not supported: the models here think "
                                f"or do not, with no budget to set; send 'none' to turn thinking off, or "
                                f'chat_template_kwargs {{"enable_thinking": true}} to turn it on', "invalid_value",
                           "reasoning_effort")
        for key, value in (self.chat_template_kwargs or {}).items():
            if key != "enable_thinking":
                raise APIError(400, f"Unsupported field: chat_template_kwargs.{key}: only enable_thinking is passed "
                                    f"to the chat template", "unsupported_field", f"chat_template_kwargs.{key}")
            if not isinstance(value, bool):
                raise APIError(400, f"chat_template_kwargs.enable_thinking must be true or false, got {value!r}",
                               "invalid_value", "chat_template_kwargs.enable_thinking")
        if self.reasoning_effort == "none" and self.thinking:
            raise APIError(400, "reasoning_effort 'none' and chat_template_kwargs.enable_thinking true disagree: "
                                "send one", "invalid_value", "reasoning_effort")

    @property
    def thinking(self) -> bool | None:
        """GenerationConfig.thinking: what the request asks of a thinking model's reasoning (None: its default)."""
        switch = (self.chat_template_kwargs or {}).get("enable_thinking")
        return False if self.reasoning_effort == "none" else switch

    @property
    def reply_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def tool_parameters(self) -> dict[str, dict]:
        """The offered functions: name -> its parameters schema (which types the values of some formats' calls)."""
        return {t.function.name: t.function.parameters or {} for t in self.tools or []}

    @property
    def tool_dicts(self) -> list[dict] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None

    @property
    def tool_choice_value(self) -> Any:
        choice = self.tool_choice
        if choice is None:
            return "auto" if self.tools else None
        return choice.model_dump() if isinstance(choice, NamedToolChoice) else choice

    @property
    def forces_tool_call(self) -> bool:
        return self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)


class CompletionRequest(_Sampling):
    # a string, several, token ids, or several lists of token ids (what lm-evaluation-harness sends)
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, prompt):
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt is an empty list")
        if isinstance(prompt, list) and any(isinstance(p, list) and not p for p in prompt):
            raise ValueError("a prompt of token ids is empty")
        return prompt

    @model_validator(mode="after")
    def _consistent(self):
        if self.max_tokens == 0 and not self.echo:
            raise APIError(400, "max_tokens=0 only makes sense with echo=true (score the prompt)", "invalid_value",
                           "max_tokens")
        if self.best_of is not None and self.best_of < self.n:
            raise APIError(400, f"best_of={self.best_of} must be at least n={self.n}", "invalid_value", "best_of")
        if self.best_of is not None and self.best_of > self.n and self.stream:
            raise APIError(400, "best_of > n cannot stream: the best are known only at the end", "invalid_value",
                           "best_of")
        if self.generations * len(self.prompts) > MAX_GENERATIONS:
            raise APIError(400, f"{len(self.prompts)} prompts x {self.generations} choices is over this server's "
                                f"{MAX_GENERATIONS} generations per request: split the request", "invalid_value",
                           "prompt")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts, each a string or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(p, int) for p in prompt):
            return [prompt]
        return list(prompt)

    @property
    def generations(self) -> int:
        return self.best_of or self.n

    @property
    def top_logprobs_wanted(self) -> int | None:
        if self.logprobs is None and self.generations > self.n:
            return 0  # best_of ranks the generations by their log-probability
        return self.logprobs


class FeedbackRequest(BaseModel):
    feedback: Literal[1, -1] | None


class EditRequest(BaseModel):
    content: str = Field(min_length=1)


class SwitchRequest(BaseModel):
    model: str
