"""POST /v1/chat/completions and /v1/completions: OpenAI's request and response shapes, SSE streaming.

A request is a Turn: one or more Choices (n, best_of, several prompts), generated one after another in one
admission slot. The response shapes (choices, logprobs, tool calls) are built in openai_shapes.py.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from finetune.tool_calls import tool_messages
from neural_chat_app.config import GenerationConfig
from neural_chat_app.generate import generate_stream
from neural_chat_app.prompts import prompt_ids
from neural_chat_app.reasoning import ReasoningSplitter, Thought, default_thinking, thinking_format
from neural_chat_app.server import openai_shapes as shapes
from neural_chat_app.server.admission import QueueFull
from neural_chat_app.server.errors import APIError
from neural_chat_app.server.schemas import ChatCompletionRequest, CompletionRequest
from neural_chat_app.server.state import ServerState, check_api_key, get_state, read_body
from neural_chat_app.streaming import StreamResult

router = APIRouter(dependencies=[Depends(check_api_key)])
_END = object()


@dataclass
class Choice:
    """One generation of a request: its prompt ids, settings and result; `echo` is the prompt text shown before
    the reply (completions with echo) and `prompt_tokens` its scored tokens."""

    index: int
    prompt: int  # which of the request's prompts
    ids: list[int]
    config: GenerationConfig
    result: StreamResult = field(default_factory=StreamResult)
    echo: str | None = None
    prompt_tokens: list | None = None
    text: str = ""
    reasoning: str = ""  # a thinking model's reasoning, apart from the text
    content_from: int | None = None  # where the text starts in the raw reply, after the reasoning
    tool_calls: list[dict] | None = None
    generate: bool = True  # False: echo only (max_tokens=0), the prompt is scored and nothing generated


class Turn:
    """One request's generations, where it is logged, and its cancellation."""

    def __init__(self, state: ServerState, backend, messages, choices: list[Choice], session: str | None, kind: str,
                 log_metadata: dict | None = None, replaces: int | None = None, templated: bool = False):
        self.state, self.backend, self.messages, self.choices = state, backend, messages, choices
        self.session, self.kind = session, kind
        self.replaces = replaces  # the logged reply this one regenerates
        self.log_metadata = log_metadata or {}
        self.cancel = threading.Event()
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.message_id: int | None = None
        self.refusal: str | None = None  # set by the safety checker: the reply, without generating
        self.links: list[dict] | None = None  # retrieval sources, when the retrieval plugin is on
        self.templated = templated  # the prompt is the chat template's: a thinking model's reasoning is split
        # The place in line was reserved before the response started. A client that leaves before the stream is
        # first read never starts run(), so give the place back when this turn is dropped unstarted.
        self._unstarted = weakref.finalize(self, state.admission.cancel_reservation)

    # The first choice, for callers with one (the Ollama routes, the log).
    @property
    def result(self) -> StreamResult:
        return self.choices[0].result

    @property
    def config(self) -> GenerationConfig:
        return self.choices[0].config

    @property
    def usage(self) -> dict:
        prompts = {c.prompt: c.result.prompt_tokens or len(c.ids) for c in self.choices}
        completion = sum(c.result.completion_tokens for c in self.choices)
        prompt = sum(prompts.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def run(self) -> AsyncIterator[tuple[Choice, str | None]]:
        """(choice, text chunk) as generated, then (choice, None) when that choice ends; waits for a slot first.
        Closing it cancels the generation."""
        state = self.state
        self._unstarted.detach()
        if self.refusal is not None:
            state.admission.cancel_reservation()
            for choice in self.choices:
                yield choice, self.refusal
                yield choice, None
            return
        await state.admission.acquire()
        fmt = thinking_format(self.backend.tokenizer) if self.templated else None
        try:
            with state.models.lease(self.backend):
                for choice in self.choices:
                    splitter = ReasoningSplitter(fmt) if fmt is not None else None
                    async for text in self._filtered(self._generate(choice)):
                        if splitter is None:
                            yield choice, text
                            continue
                        for piece in _pieces(splitter, splitter.feed(text), choice):
                            yield choice, piece
                    if splitter is not None:
                        for piece in _pieces(splitter, splitter.finish(), choice):
                            yield choice, piece
                    yield choice, None
        finally:
            state.admission.release()

    def _filtered(self, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        plugins = self.state.plugins
        return chunks if plugins is None else plugins.afilter_reply(chunks)

    async def _generate(self, choice: Choice) -> AsyncIterator[str]:
        if choice.echo is not None and choice.config.logprobs is not None:
            choice.prompt_tokens = await anyio.to_thread.run_sync(
                self.backend.prompt_logprobs, choice.ids, choice.config.logprobs
            )
        if not choice.generate:
            choice.result.prompt_tokens = len(choice.ids)
            choice.result.finished_at = time.perf_counter()
            return
        source = generate_stream(
            self.backend, self.messages, choice.config, "chat" if self.templated else "text", cancel=self.cancel,
            result=choice.result, ids=choice.ids
        )
        try:
            while True:
                chunk = await anyio.to_thread.run_sync(next, source, _END)
                if chunk is _END:
                    return
                yield chunk
        finally:
            self.cancel.set()  # no-op after a normal end; stops the backend after a disconnect
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(source.close)
            self.cancel = threading.Event()  # the next choice starts uncancelled

    async def reply_chunks(self) -> AsyncIterator[str]:
        """The text of a one-choice turn, chunk by chunk (the Ollama routes); reasoning comes as Thought chunks."""
        async for _, text in self.run():
            if text is not None:
                yield text

    async def log_reply(self, text: str, interrupted: bool, extra: dict | None = None) -> None:
        r = self.result
        cancelled = interrupted or r.finish_reason == "error"
        for choice in self.choices:
            c = choice.result
            self.state.metrics.count_generation(c.prompt_tokens, c.completion_tokens, c.total_s, c.first_token_s,
                                                cancelled)
        log = self.state.chatlog
        if log is None or self.session is None:
            return
        metadata = {
            "finish_reason": r.finish_reason,
            "endpoint": self.kind,
            "first_token_ms": None if r.first_token_s is None else round(r.first_token_s * 1000, 1),
            **self.log_metadata,
            **(extra or {}),
        }
        if interrupted:
            metadata["interrupted"] = True
        if len(self.choices) > 1:
            metadata["choices"] = len(self.choices)  # the log keeps the first as the reply
        self.message_id = await anyio.to_thread.run_sync(
            lambda: log.add_message(
                self.session,
                "assistant",
                text,
                self.backend.model_id,
                round(r.total_s * 1000, 1),
                r.completion_tokens,
                metadata,
                replaces=self.replaces,
            )
        )


def _pieces(splitter: ReasoningSplitter, parts: list[tuple[str, str]], choice: Choice) -> list[str]:
    """A thinking model's reply pieces as the routes take them: reasoning as Thought, the answer as str."""
    choice.content_from = splitter.content_from
    return [Thought(text) if kind == "reasoning" else text for kind, text in parts]


def _check_features(backend, config: GenerationConfig, echo: bool) -> None:
    """Refuse, by name, what the serving backend cannot do."""
    features = getattr(backend, "features", frozenset())
    wanted = {"logprobs": config.logprobs is not None, "logit_bias": bool(config.logit_bias), "echo": echo}
    for name, asked in wanted.items():
        if asked and name not in features:
            raise APIError(400, f"Unsupported field: {name}: the {backend.kind} backend serving "
                                f"{backend.model_id!r} does not provide it (the torch backend does)",
                           "unsupported_field", name)


async def _prepare(request: Request, req, messages: list[dict], task: str, kind: str,
                   prompts: list | None = None, tools: list[dict] | None = None) -> Turn:
    """The Turn of a request: `messages` prompt the model (rendered for `task`), or `prompts` (completions: each a
    string or token ids) do, one Choice per prompt and per `req.n`."""
    state = get_state(request)
    limits = state.settings.limits
    config = req.generation_config(limits.max_tokens)
    backend = await state.models.resolve(req.model)
    if config.thinking is None and state.settings.thinking is not None:
        config = replace(config, thinking=default_thinking(backend.tokenizer, state.settings.thinking))
    echo = bool(getattr(req, "echo", False))
    _check_features(backend, config, echo)
    # Plugins: the safety checker may refuse the query; retrieval adds context to what the model sees (the log
    # keeps the user's own words).
    prepared = None
    if state.plugins and prompts is None:
        prepared = await anyio.to_thread.run_sync(state.plugins.prepare, messages)
    model_messages = prepared.messages if prepared is not None else messages
    offered = tools  # as the client sent them: the log keeps them for fine-tuning, which renders them itself
    model_messages, tools = tool_messages(model_messages, tools, backend.tokenizer)  # unchanged without tools
    try:
        if prompts is None:
            prompt_list = [(prompt_ids(backend.tokenizer, model_messages, task, tools, config.thinking), None)]
        else:
            prompt_list = [_completion_prompt(backend.tokenizer, p) for p in prompts]
    except ValueError as err:
        raise APIError(400, str(err), "invalid_prompt") from err
    for ids, _ in prompt_list:
        if len(ids) > limits.max_prompt_tokens:
            raise APIError(
                400,
                f"The prompt has {len(ids)} tokens; this server's limit is {limits.max_prompt_tokens}",
                "context_length_exceeded",
                "messages" if kind == "chat" else "prompt",
            )
    choices = _choices(req, config, prompt_list, echo)
    try:
        state.admission.reserve()
    except QueueFull as err:
        raise APIError(429, f"{err}; retry later", "rate_limit_exceeded") from err
    try:
        # Scoring traffic (several prompts, token ids, echo: lm-evaluation-harness) is not a conversation.
        logged = getattr(req, "store", None) is not False and (prompts is None or (
            len(prompts) == 1 and isinstance(prompts[0], str) and not echo))
        conversation = req.conversation_id or request.headers.get("x-conversation-id")
        replaces = getattr(req, "regenerate", None)
        if replaces is not None:  # the prompt is logged already: only the new reply will be
            session = await _check_regenerate(state, conversation, replaces)
        else:
            session = await _log_prompt(state, conversation, messages, backend.model_id, kind) if logged else None
    except BaseException:
        state.admission.cancel_reservation()
        raise
    log_metadata = dict(getattr(req, "log_metadata", None) or {})
    # A tool's results (the last messages, after the call) go into the metadata of the reply that reads them.
    results = []
    for m in reversed(messages):
        if m["role"] != "tool":
            break
        results.insert(0, {"tool_call_id": m.get("tool_call_id"), "content": m["content"]})
    if results:
        log_metadata["tool_results"] = results
    if offered:
        log_metadata["tools"] = offered
    turn = Turn(state, backend, model_messages, choices, session, kind, log_metadata, replaces,
                templated=prompts is None and task != "text")
    if prepared is not None:
        turn.refusal = prepared.refusal
        turn.links = prepared.links if state.plugins.retriever is not None else None
    return turn


def _completion_prompt(tokenizer, prompt) -> tuple[list[int], str]:
    """(ids, text) of one completions prompt: a string is tokenized as a continuation; token ids are taken as
    given (their text is decoded for echo)."""
    if isinstance(prompt, str):
        return prompt_ids(tokenizer, [{"role": "user", "content": prompt}], "text"), prompt
    vocab = len(tokenizer)
    bad = next((t for t in prompt if not 0 <= t < vocab), None)
    if bad is not None:
        raise ValueError(f"prompt holds token id {bad}; this model's vocabulary has {vocab} tokens")
    return list(prompt), tokenizer.decode(prompt, skip_special_tokens=True)


def _choices(req, config: GenerationConfig, prompt_list, echo: bool) -> list[Choice]:
    generations = getattr(req, "generations", getattr(req, "n", 1))
    generate = getattr(req, "max_tokens", None) != 0  # 0: echo only, the prompt is scored
    choices = []
    for p, (ids, text) in enumerate(prompt_list):
        for i in range(generations):
            # n choices from one seed must differ: each gets the next seed
            seeded = config if config.seed is None or i == 0 else replace(config, seed=config.seed + i)
            choices.append(Choice(len(choices), p, ids, seeded, echo=text if echo else None, generate=generate))
    return choices


async def _check_regenerate(state: ServerState, session: str | None, message_id: int) -> str:
    log = state.chatlog
    if log is None:
        raise APIError(404, "The conversation log is disabled on this server: there is no reply to regenerate",
                       "chat_log_disabled", "regenerate")
    if not session:
        raise APIError(400, "regenerate needs the conversation_id of the reply it replaces", None, "conversation_id")
    why = await anyio.to_thread.run_sync(log.replaceable, session, message_id)
    if why is not None:
        raise APIError(409, why, "not_regenerable", "regenerate")
    return session


async def _log_prompt(state: ServerState, session: str | None, messages, model_id: str, kind: str) -> str | None:
    """Commit the user's turn before generating. A new conversation logs every message it arrived with."""
    log = state.chatlog
    if log is None:
        return session
    session = session or uuid.uuid4().hex

    def write():
        is_new = not log.has_session(session)
        title = next((m["content"] for m in messages if m["role"] == "user"), "")
        log.ensure_session(session, model_id, title)
        for m in messages if is_new else messages[-1:]:
            if m["role"] == "tool":  # the log's roles are the chat's three: kept with the reply (log_reply)
                continue
            metadata = {"endpoint": kind, **({"tool_calls": m["tool_calls"]} if m.get("tool_calls") else {})}
            log.add_message(session, m["role"], m["content"], model_id, metadata=metadata)

    await anyio.to_thread.run_sync(write)
    return session


async def _event_stream(turn: Turn, req, include_usage: bool) -> AsyncIterator[str]:
    stream = shapes.ChunkWriter(turn, req)
    logged = False
    try:
        yield stream.opening()
        try:
            async for choice, text in turn.run():
                for event in (stream.text(choice, text) if text is not None else stream.end(choice)):
                    yield event
        except Exception as err:  # the backend failed: tell the client in-band, never crash the server
            turn.result.finish_reason = "error"
            yield shapes.sse({"error": {"message": f"Generation failed: {err}", "type": "server_error", "code": None}})
        # The reply is committed to the log before the client sees the end of the stream.
        await turn.log_reply(turn.choices[0].text, interrupted=False, extra=shapes.log_extra(turn.choices[0]))
        logged = True
        yield stream.closing()
        if include_usage:
            yield shapes.sse({**stream.head, "choices": [], "usage": turn.usage})
        yield "data: [DONE]\n\n"
    finally:
        if not logged:  # the client went away mid-stream: keep what was generated, marked as interrupted
            with anyio.CancelScope(shield=True):
                await turn.log_reply(stream.partial_text(), interrupted=True)


async def _respond(turn: Turn, req) -> JSONResponse | StreamingResponse:
    headers = {"X-Conversation-Id": turn.session} if turn.session else {}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            _event_stream(turn, req, include_usage),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache"},
        )
    parts: dict[int, list[str]] = {c.index: [] for c in turn.choices}
    try:
        async for choice, text in turn.run():
            if isinstance(text, Thought):
                choice.reasoning += text
            elif text is not None:
                parts[choice.index].append(text)
    except Exception as err:
        await turn.log_reply("".join(parts[0]), interrupted=True)
        raise APIError(500, f"Generation failed: {err}", "generation_failed") from err
    for choice in turn.choices:
        choice.text = "".join(parts[choice.index])
    body = shapes.response_body(turn, req)
    await turn.log_reply(turn.choices[0].text, interrupted=False, extra=shapes.log_extra(turn.choices[0]))
    body.update({"conversation_id": turn.session, "message_id": turn.message_id})
    if turn.links is not None:
        body["sources"] = turn.links  # the retrieval plugin's sources: source, location, score, text
    return JSONResponse(body, headers=headers)


def with_default_system_prompt(request: Request, messages: list[dict]) -> list[dict]:
    """The conversation with the server's `system_prompt` first, unless it opens with a system message of its own."""
    system = get_state(request).settings.system_prompt
    if system and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}, *messages]
    return messages


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    from neural_chat_app.tools import forced_call_schema

    req = await read_body(request, ChatCompletionRequest)
    messages = [m.as_dict() for m in req.messages]
    if messages[-1]["role"] == "assistant":
        raise APIError(400, "The last message must come from the user (or system), not the assistant", None, "messages")
    messages = with_default_system_prompt(request, messages)
    forced = forced_call_schema(req.tool_dicts, req.tool_choice_value, req.parallel_tool_calls) if req.tools \
        else None
    if forced is not None:  # the call is decoded under its schema (tools.py)
        req = req.model_copy(update={"response_format": forced})
    turn = await _prepare(request, req, messages, "chat", "chat", tools=req.tool_dicts)
    return await _respond(turn, req)


@router.post("/v1/completions")
async def completions(request: Request):
    req = await read_body(request, CompletionRequest)
    prompts = req.prompts
    first = prompts[0] if isinstance(prompts[0], str) else ""
    turn = await _prepare(request, req, [{"role": "user", "content": first}], "text", "completion", prompts=prompts)
    return await _respond(turn, req)
