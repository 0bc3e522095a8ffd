"""POST /v1/chat/completions and /v1/completions: OpenAI's request and response shapes, SSE streaming."""

from __future__ import annotations

import json
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from neural_chat_app.generate import generate_stream
from neural_chat_app.prompts import prompt_ids
from neural_chat_app.server.admission import QueueFull
from neural_chat_app.server.errors import APIError
from neural_chat_app.server.schemas import ChatCompletionRequest, CompletionRequest
from neural_chat_app.server.state import ServerState, check_api_key, get_state, read_body
from neural_chat_app.streaming import StreamResult

router = APIRouter(dependencies=[Depends(check_api_key)])
_END = object()


class Turn:
    """One request's generation: its inputs, its StreamResult, and where it is logged."""

    def __init__(self, state: ServerState, backend, messages, ids, config, session: str | None, kind: str):
        self.state, self.backend, self.messages, self.ids, self.config = state, backend, messages, ids, config
        self.session, self.kind = session, kind
        self.result = StreamResult()
        self.cancel = threading.Event()
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.message_id: int | None = None
        self.refusal: str | None = None  # set by the safety checker: the reply, without generating
        self.links: list[dict] | None = None  # retrieval sources, when the retrieval plugin is on
        # The place in line was reserved before the response started. A client that leaves before the stream is
        # first read never starts chunks(), so give the place back when this turn is dropped unstarted.
        self._unstarted = weakref.finalize(self, state.admission.cancel_reservation)

    @property
    def usage(self) -> dict:
        r = self.result
        return {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
        }

    async def chunks(self) -> AsyncIterator[str]:
        """Text chunks from the backend thread; waits for a slot first. Closing it cancels the generation."""
        state = self.state
        self._unstarted.detach()
        if self.refusal is not None:
            state.admission.cancel_reservation()
            yield self.refusal
            return
        await state.admission.acquire()
        try:
            with state.models.lease(self.backend):
                source = generate_stream(
                    self.backend, self.messages, self.config, cancel=self.cancel, result=self.result, ids=self.ids
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
        finally:
            state.admission.release()

    def reply_chunks(self) -> AsyncIterator[str]:
        """chunks(), through the safety checker's reply filter when that plugin is on."""
        plugins = self.state.plugins
        if plugins is None or self.refusal is not None:
            return self.chunks()
        return plugins.afilter_reply(self.chunks())

    async def log_reply(self, text: str, interrupted: bool) -> None:
        r = self.result
        cancelled = interrupted or r.finish_reason == "error"
        self.state.metrics.count_generation(r.prompt_tokens, r.completion_tokens, r.total_s, r.first_token_s, cancelled)
        log = self.state.chatlog
        if log is None or self.session is None:
            return
        metadata = {
            "finish_reason": r.finish_reason,
            "endpoint": self.kind,
            "first_token_ms": None if r.first_token_s is None else round(r.first_token_s * 1000, 1),
        }
        if interrupted:
            metadata["interrupted"] = True
        self.message_id = await anyio.to_thread.run_sync(
            lambda: log.add_message(
                self.session,
                "assistant",
                text,
                self.backend.model_id,
                round(r.total_s * 1000, 1),
                r.completion_tokens,
                metadata,
            )
        )


async def _prepare(request: Request, req, messages: list[dict], task: str, kind: str) -> Turn:
    state = get_state(request)
    limits = state.settings.limits
    config = req.generation_config(limits.max_tokens)
    backend = await state.models.resolve(req.model)
    # Plugins: the safety checker may refuse the query; retrieval adds context to what the model sees (the log
    # keeps the user's own words).
    prepared = await anyio.to_thread.run_sync(state.plugins.prepare, messages) if state.plugins else None
    model_messages = prepared.messages if prepared is not None else messages
    try:
        ids = prompt_ids(backend.tokenizer, model_messages, task)
    except ValueError as err:
        raise APIError(400, str(err), "invalid_prompt") from err
    if len(ids) > limits.max_prompt_tokens:
        raise APIError(
            400,
            f"The prompt has {len(ids)} tokens; this server's limit is {limits.max_prompt_tokens}",
            "context_length_exceeded",
            "messages" if kind == "chat" else "prompt",
        )
    try:
        state.admission.reserve()
    except QueueFull as err:
        raise APIError(429, f"{err}; retry later", "rate_limit_exceeded") from err
    try:
        session = await _log_prompt(
            state, req.conversation_id or request.headers.get("x-conversation-id"), messages, backend.model_id, kind
        )
    except BaseException:
        state.admission.cancel_reservation()
        raise
    turn = Turn(state, backend, model_messages, ids, config, session, kind)
    if prepared is not None:
        turn.refusal = prepared.refusal
        turn.links = prepared.links if state.plugins.retriever is not None else None
    return turn


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
            log.add_message(session, m["role"], m["content"], model_id, metadata={"endpoint": kind})

    await anyio.to_thread.run_sync(write)
    return session


def _sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _choice(turn: Turn, text: str | None, finish_reason: str | None, first: bool = False) -> dict:
    if turn.kind == "chat":
        delta = {} if text is None else {"content": text}
        if first:
            delta = {"role": "assistant", "content": ""}
        return {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    return {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}


async def _event_stream(turn: Turn, include_usage: bool) -> AsyncIterator[str]:
    obj = "chat.completion.chunk" if turn.kind == "chat" else "text_completion"
    head = {"id": turn.id, "object": obj, "created": turn.created, "model": turn.backend.model_id}
    parts: list[str] = []
    logged = False
    try:
        if turn.kind == "chat":
            yield _sse({**head, "choices": [_choice(turn, None, None, first=True)]})
        try:
            async for chunk in turn.reply_chunks():
                parts.append(chunk)
                yield _sse({**head, "choices": [_choice(turn, chunk, None)]})
        except Exception as err:  # the backend failed: tell the client in-band, never crash the server
            turn.result.finish_reason = "error"
            yield _sse({"error": {"message": f"Generation failed: {err}", "type": "server_error", "code": None}})
        # The reply is committed to the log before the client sees the end of the stream.
        await turn.log_reply("".join(parts), interrupted=False)
        logged = True
        finish = "length" if turn.result.finish_reason == "length" else "stop"
        extra = {"conversation_id": turn.session, "message_id": turn.message_id}
        if turn.links is not None:
            extra["sources"] = turn.links
        yield _sse({**head, "choices": [_choice(turn, None, finish)], **extra})
        if include_usage:
            yield _sse({**head, "choices": [], "usage": turn.usage})
        yield "data: [DONE]\n\n"
    finally:
        if not logged:  # the client went away mid-stream: keep what was generated, marked as interrupted
            with anyio.CancelScope(shield=True):
                await turn.log_reply("".join(parts), interrupted=True)


async def _respond(turn: Turn, req) -> JSONResponse | StreamingResponse:
    headers = {"X-Conversation-Id": turn.session} if turn.session else {}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            _event_stream(turn, include_usage),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache"},
        )
    parts: list[str] = []
    try:
        async for chunk in turn.reply_chunks():
            parts.append(chunk)
    except Exception as err:
        await turn.log_reply("".join(parts), interrupted=True)
        raise APIError(500, f"Generation failed: {err}", "generation_failed") from err
    text = "".join(parts)
    await turn.log_reply(text, interrupted=False)
    finish = "length" if turn.result.finish_reason == "length" else "stop"
    if turn.kind == "chat":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
            "logprobs": None,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    body = {
        "id": turn.id,
        "object": obj,
        "created": turn.created,
        "model": turn.backend.model_id,
        "choices": [choice],
        "usage": turn.usage,
        "conversation_id": turn.session,
        "message_id": turn.message_id,
    }
    if turn.links is not None:
        body["sources"] = turn.links  # the retrieval plugin's sources: source, location, score, text
    return JSONResponse(body, headers=headers)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    req = await read_body(request, ChatCompletionRequest)
    messages = [m.as_dict() for m in req.messages]
    if messages[-1]["role"] == "assistant":
        raise APIError(400, "The last message must come from the user (or system), not the assistant", None, "messages")
    system = get_state(request).settings.system_prompt
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    turn = await _prepare(request, req, messages, "chat", "chat")
    return await _respond(turn, req)


@router.post("/v1/completions")
async def completions(request: Request):
    req = await read_body(request, CompletionRequest)
    turn = await _prepare(request, req, [{"role": "user", "content": req.prompt}], "text", "completion")
    return await _respond(turn, req)
