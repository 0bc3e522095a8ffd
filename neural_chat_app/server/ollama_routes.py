"""Ollama's API: /api/chat, /api/generate, /api/tags, /api/show, /api/ps, /api/version, /api/embed (and the older
/api/embeddings), for tools that speak Ollama (Open WebUI, the `ollama` Python client, editor plugins).

Generation goes through the OpenAI routes' path (generation_routes._prepare and Turn: admission, model lease,
plugins, the conversation log); this module only translates shapes. Streams are NDJSON, one object a line, the last
with done=true, done_reason and Ollama's counters in nanoseconds. Errors are Ollama's {"error": "..."} with the
status. Fields and options not honoured are refused by name (ollama_schemas.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime, timezone

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from finetune.tool_calls import tool_messages
from neural_chat_app.config import GenerationConfig
from neural_chat_app.logits import finite
from neural_chat_app.prompts import prompt_ids
from neural_chat_app.reasoning import Thought, template_markers
from neural_chat_app.registry import find_model
from neural_chat_app.server.embedding_routes import (
    EMBEDDING_DIMENSIONS,
    EMBEDDING_MODEL_ID,
    check_embedding_model,
    embed_admitted,
    embedding_model,
    is_embedding_model,
)
from neural_chat_app.server.errors import APIError
from neural_chat_app.server.generation_routes import Turn, _prepare, with_default_system_prompt
from neural_chat_app.server.models import DEFAULT_ALIASES
from neural_chat_app.server.ollama_models import (
    chat_model_facts,
    default_parameters,
    embedding_facts,
    model_info,
    ollama_name,
    tag,
)
from neural_chat_app.server.ollama_schemas import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    ShowRequest,
    TurnRequest,
    bare_model_name,
    refuse,
)
from neural_chat_app.server.openai_shapes import answer_offset
from neural_chat_app.server.state import check_api_key, get_state, read_body
from neural_chat_app.tools import ToolCallSplitter, parse_tool_calls

logger = logging.getLogger(__name__)

# The Ollama release whose API these routes follow (format schemas came in 0.5, think in 0.9): what a client that
# gates features on /api/version reads.
OLLAMA_VERSION = "0.9.0"
_LOADED_UNTIL = "2318-08-19T00:00:00Z"  # Ollama's expires_at for a model kept loaded (keep_alive=-1)


class OllamaRoute(APIRoute):
    """Errors as Ollama's clients read them, {"error": message}, including the API key check's 401."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def handle(request: Request):
            try:
                return await handler(request)
            except APIError as err:
                return ollama_error(err.status, err.message)
            except HTTPException as err:
                return ollama_error(err.status_code, str(err.detail))
            except Exception as err:
                logger.exception("Unhandled error on %s", request.url.path)
                return ollama_error(500, f"Internal error: {type(err).__name__}: {err}")

        return handle


def ollama_error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


router = APIRouter(route_class=OllamaRoute, dependencies=[Depends(check_api_key)])


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ns(seconds: float | None) -> int:
    return int(round((seconds or 0.0) * 1e9))


# ---- generation -------------------------------------------------------------------------------------------------


async def _resolve(request: Request, name: str):
    """(backend, seconds spent loading it) for an Ollama model name."""
    if is_embedding_model(name) and bare_model_name(name) not in DEFAULT_ALIASES:
        raise APIError(400, f"{name!r} is an embedding model: it serves /api/embed, not generation", "invalid_model")
    models = get_state(request).models
    before, start = models.active, time.perf_counter()
    backend = await models.resolve(bare_model_name(name))
    # an adapter's view shares the loaded base: only a switch of the whole model counts as a load
    switched = getattr(backend, "base", backend) is not getattr(before, "base", before)
    return backend, (time.perf_counter() - start if switched else 0.0)


async def _start(request: Request, req, backend, messages: list[dict], task: str, kind: str,
                 tools: list[dict] | None = None) -> Turn:
    """A Turn through the OpenAI routes' path; options.num_ctx bounds prompt + reply (the prompt is never cut)."""
    num_ctx, make_config = req.num_ctx, req.generation_config
    if num_ctx is not None:
        try:
            model_messages, model_tools = tool_messages(messages, tools, backend.tokenizer)
            thinking = req.think if isinstance(req.think, bool) else None
            n = len(prompt_ids(backend.tokenizer, model_messages, task, model_tools, thinking))
        except ValueError:
            n = 0  # _prepare says what is wrong with the prompt
        if n >= num_ctx:
            raise APIError(400, f"The prompt has {n} tokens; options.num_ctx={num_ctx} leaves no room for a reply: "
                                f"raise num_ctx or shorten the prompt", "context_length_exceeded")

        def make_config(limit: int) -> GenerationConfig:
            config = req.generation_config(limit)
            return replace(config, max_new_tokens=min(config.max_new_tokens, num_ctx - n))

    turn_req = TurnRequest(bare_model_name(req.model), None, make_config)
    return await _prepare(request, turn_req, messages, task, kind, tools=tools)


class _Reply:
    """Ollama's objects for one Turn: its text as it streams, the tool calls parsed out of it (a chat with
    tools: a ToolCallSplitter holds back what may be a call), and its log-probabilities when asked."""

    def __init__(self, turn: Turn, model: str, chat: bool, tool_parameters: dict[str, dict], logprobs: bool):
        self.turn, self.model, self.chat, self.tool_parameters = turn, model, chat, tool_parameters
        self.splitter = ToolCallSplitter(tool_parameters) if tool_parameters else None
        self.logprobs = logprobs
        self.generated = ""  # the reply's text as the backend gave it, tool calls included
        self.text = ""  # what the client gets as content
        self.thinking = ""  # a thinking model's reasoning, which the client gets as thinking
        self.calls: list[dict] = []  # OpenAI-shaped (tools.py), as the log keeps them
        self.sent_tokens = 0

    def obj(self, text: str, final: bool = False, thinking: str = "") -> dict:
        body = {"model": self.model, "created_at": _now()}
        if self.chat:
            body["message"] = {"role": "assistant", "content": text}
            if thinking:
                body["message"]["thinking"] = thinking
            if final and self.calls:
                body["message"]["tool_calls"] = [_ollama_call(c, i) for i, c in enumerate(self.calls)]
        else:
            body["response"] = text
            if thinking:
                body["thinking"] = thinking
        if self.logprobs:
            body["logprobs"] = self._new_logprobs(final)
        body["done"] = False
        return body

    def _new_logprobs(self, final: bool) -> list[dict]:
        """The entries not sent yet whose token is in the text so far (an end-of-turn token has no text)."""
        tokenizer = self.turn.backend.tokenizer
        start = answer_offset(self.turn.choices[0])  # after a thinking model's reasoning
        entries = [t for t in (self.turn.result.tokens or []) if start <= t.offset < start + len(self.generated)]
        new = entries[self.sent_tokens:]
        if not final:
            new = new[:-1]  # the last token's text may still grow (a character split across tokens)
        self.sent_tokens += len(new)

        def one(token_id: int, logprob: float) -> dict:
            return {"token": tokenizer.decode([token_id], skip_special_tokens=False), "logprob": finite(logprob)}

        return [{**one(t.token_id, t.logprob), "top_logprobs": [one(i, lp) for i, lp in t.top]} for t in new]

    def feed(self, chunk: str) -> list[dict]:
        if isinstance(chunk, Thought):
            self.thinking += chunk
            return [self.obj("", thinking=str(chunk))]
        self.generated += chunk
        out = self.splitter.feed(chunk) if self.splitter is not None else chunk
        self.text += out
        return [self.obj(out)] if out else []

    def finish(self) -> list[dict]:
        """What is still to send before the last object: text held back as a possible call, and the calls."""
        if self.splitter is None:
            return []
        rest, self.calls = self.splitter.finish()
        self.text += rest
        return [self.obj(rest)] if rest else []

    def whole(self, parts: list[str]) -> dict:
        self.thinking = "".join(p for p in parts if isinstance(p, Thought))
        text = "".join(p for p in parts if not isinstance(p, Thought))
        self.generated = self.text = text
        if self.tool_parameters:
            content, self.calls = parse_tool_calls(text, self.tool_parameters)
            self.text = (content or "") if self.calls else text
        return self.obj(self.text, final=True, thinking=self.thinking)

    @property
    def log_extra(self) -> dict:
        extra = {"tool_calls": self.calls} if self.calls else {}
        return {**extra, "reasoning": self.thinking} if self.thinking else extra


def _ollama_call(call: dict, index: int) -> dict:
    """tools.py's OpenAI-shaped call (arguments a JSON string) in newer Ollama's shape: arguments an object, the
    call's id (which the result sends back as tool_call_id) and its place among the reply's calls."""
    function = call["function"]
    return {"id": call["id"], "function": {"index": index, "name": function["name"],
                                           "arguments": json.loads(function["arguments"] or "{}")}}


def _counters(turn: Turn, start: float, load_s: float) -> dict:
    r = turn.result
    prompt_s = r.first_token_s if r.first_token_s is not None else r.total_s
    return {
        "done": True,
        "done_reason": "length" if r.finish_reason == "length" else "stop",
        "total_duration": _ns(time.perf_counter() - start),
        "load_duration": _ns(load_s),
        "prompt_eval_count": r.prompt_tokens,
        "prompt_eval_duration": _ns(prompt_s),
        "eval_count": r.completion_tokens,
        "eval_duration": _ns(max(r.total_s - prompt_s, 0.0)),
    }


def _line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


async def _ndjson(turn: Turn, reply: _Reply, start: float, load_s: float) -> AsyncIterator[str]:
    logged = False
    try:
        try:
            async for chunk in turn.reply_chunks():
                for obj in reply.feed(chunk):
                    yield _line(obj)
        except Exception as err:  # the backend failed: say so in-band (the client raises it), never crash
            turn.result.finish_reason = "error"
            await turn.log_reply(reply.generated, interrupted=False)
            logged = True
            yield _line({"error": f"Generation failed: {err}"})
            return
        for obj in reply.finish():
            yield _line(obj)
        # The reply is committed to the log before the client sees the end of the stream.
        await turn.log_reply(reply.text, interrupted=False, extra=reply.log_extra)
        logged = True
        yield _line({**reply.obj("", final=True), **_counters(turn, start, load_s)})
    finally:
        if not logged:  # the client went away mid-stream: keep what was generated, marked as interrupted
            with anyio.CancelScope(shield=True):
                await turn.log_reply(reply.generated, interrupted=True)


async def _respond(turn: Turn, reply: _Reply, stream: bool, start: float, load_s: float):
    headers = {"X-Conversation-Id": turn.session} if turn.session else {}
    if stream:
        return StreamingResponse(_ndjson(turn, reply, start, load_s), media_type="application/x-ndjson",
                                 headers=headers)
    parts: list[str] = []
    try:
        async for chunk in turn.reply_chunks():
            parts.append(chunk)
    except Exception as err:
        await turn.log_reply("".join(p for p in parts if not isinstance(p, Thought)), interrupted=True)
        raise APIError(500, f"Generation failed: {err}", "generation_failed") from err
    body = reply.whole(parts)
    await turn.log_reply(reply.text, interrupted=False, extra=reply.log_extra)
    return JSONResponse({**body, **_counters(turn, start, load_s)}, headers=headers)


def _loaded(model: str, chat: bool) -> dict:
    """The answer to Ollama's load request (no messages, or no prompt): the model is ready."""
    body = {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
    return {"model": model, "created_at": _now(), **body, "done": True, "done_reason": "load"}


@router.post("/api/chat")
async def chat(request: Request):
    start = time.perf_counter()
    req = await read_body(request, ChatRequest)
    refuse(req.unsupported())
    backend, load_s = await _resolve(request, req.model)
    model = req.model or ollama_name(backend.model_id)
    if not req.messages:  # Ollama's way to load a model
        return _loaded(model, chat=True)
    messages = [m.as_dict(i) for i, m in enumerate(req.messages)]
    if messages[-1]["role"] == "assistant":
        raise APIError(400, "The last message must come from the user (or system, or tool): continuing an "
                            "assistant message is not supported", "invalid_value")
    messages = with_default_system_prompt(request, messages)
    turn = await _start(request, req, backend, messages, "chat", "chat", tools=req.tool_dicts)
    reply = _Reply(turn, model, True, req.tool_parameters, bool(req.logprobs))
    return await _respond(turn, reply, req.stream is not False, start, load_s)


@router.post("/api/generate")
async def generate(request: Request):
    start = time.perf_counter()
    req = await read_body(request, GenerateRequest)
    refuse(req.unsupported())
    backend, load_s = await _resolve(request, req.model)
    model = req.model or ollama_name(backend.model_id)
    if not req.prompt:  # Ollama's way to load a model
        return _loaded(model, chat=False)
    if req.raw or not getattr(backend.tokenizer, "chat_template", None):
        # The prompt as given, continued: raw, or a model without a chat template (Ollama's {{ .Prompt }}).
        if req.system:
            refuse([f"system ({backend.model_id} has no chat template to put it in: write it into the prompt)"])
        messages, task = [{"role": "user", "content": req.prompt}], "text"
    else:
        # The prompt is the user turn of the model's chat template, after `system` (or the server's system prompt).
        system = req.system or get_state(request).settings.system_prompt
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": req.prompt})
        task = "completion"
    turn = await _start(request, req, backend, messages, task, "completion")
    reply = _Reply(turn, model, False, set(), bool(req.logprobs))
    return await _respond(turn, reply, req.stream is not False, start, load_s)


# ---- models -----------------------------------------------------------------------------------------------------


@router.get("/api/version")
async def version():
    return {"version": OLLAMA_VERSION}


@router.get("/api/tags")
async def tags(request: Request):
    """The models of /v1/models, the embedding model included, in Ollama's shape."""
    models = get_state(request).models
    active = models.active

    def collect():
        listed = [tag(e.id, chat_model_facts(e, active)) for e in models.entries()]
        return [*listed, tag(EMBEDDING_MODEL_ID, embedding_facts(request))]

    return {"models": await anyio.to_thread.run_sync(collect)}


@router.get("/api/ps")
async def ps(request: Request):
    """The loaded models: the served one, and the embedding model once an embeddings request loaded it."""
    models = get_state(request).models
    active = models.active
    embeddings = getattr(request.app.state, "embedding_model", None)

    def collect():
        entry = find_model(models.entries(), active.model_id)
        loaded = [(active.model_id, chat_model_facts(entry, active))]
        if embeddings is not None and embeddings.loaded:
            loaded.append((EMBEDDING_MODEL_ID, embedding_facts(request)))
        return [
            {**tag(name, facts), "expires_at": _LOADED_UNTIL, "size_vram": 0,
             "context_length": facts["config"].get("max_position_embeddings") or 0}
            for name, facts in loaded
        ]

    return {"models": await anyio.to_thread.run_sync(collect)}


@router.post("/api/show")
async def show(request: Request):
    req = await read_body(request, ShowRequest)
    refuse(req.unsupported())
    name = req.model or req.name
    state = get_state(request)
    if is_embedding_model(name) and bare_model_name(name) not in DEFAULT_ALIASES:
        facts = await anyio.to_thread.run_sync(embedding_facts, request)
        info = {**model_info(EMBEDDING_MODEL_ID, facts), "bert.pooling_type": "mean",
                "bert.embedding_length": EMBEDDING_DIMENSIONS}
        return {"modelfile": f"# {EMBEDDING_MODEL_ID}: the retrieval plugin's embedding model\n", "parameters": "",
                "template": "", "details": facts["details"], "model_info": info, "capabilities": ["embedding"],
                "modified_at": facts["modified_at"]}
    models = state.models
    bare = bare_model_name(name)
    model_id = models.active.model_id if not bare or bare in DEFAULT_ALIASES else bare

    def describe():
        entry = find_model(models.entries(), model_id)
        return None if entry is None else (entry, chat_model_facts(entry, models.active))

    found = await anyio.to_thread.run_sync(describe)
    if found is None:
        raise APIError(404, f"model {name!r} not found; GET /api/tags lists the models here", "model_not_found")
    entry, facts = found
    return {
        "modelfile": f"# Served by neural_chat_app ({entry.kind}, {entry.backend} backend)\nFROM {entry.path}\n",
        "parameters": default_parameters(),
        "template": facts["template"],  # the model's Jinja chat template (Ollama's are Go templates)
        "details": facts["details"],
        "model_info": model_info(entry.id, facts),
        # "thinking": the template writes reasoning, which `think` switches and `thinking` carries (reasoning.py)
        "capabilities": ["completion", *(["thinking"] if template_markers(facts["template"] or "") else [])],
        "modified_at": facts["modified_at"],
    }


# ---- embeddings -------------------------------------------------------------------------------------------------


def _check_dimensions(dimensions: int | None) -> None:
    if dimensions is not None and dimensions != EMBEDDING_DIMENSIONS:
        raise APIError(400, f"dimensions={dimensions}: {EMBEDDING_MODEL_ID} gives {EMBEDDING_DIMENSIONS} dimensions, "
                            f"and shortening its vectors is not supported", "invalid_value")


@router.post("/api/embed")
async def embed(request: Request):
    start = time.perf_counter()
    req = await read_body(request, EmbedRequest)
    refuse(req.unsupported())
    check_embedding_model(req.model)
    _check_dimensions(req.dimensions)
    # An empty input string embeds nothing (Ollama's way to load the model); in a list, "" is a text.
    texts = ([req.input] if req.input else []) if isinstance(req.input, str) else list(req.input)
    model = embedding_model(request)
    result = await embed_admitted(request, lambda: model.embed(texts, truncate=req.truncate))
    return {
        "model": req.model or ollama_name(EMBEDDING_MODEL_ID),
        "embeddings": result.vectors.tolist(),
        "total_duration": _ns(time.perf_counter() - start),
        "load_duration": _ns(result.load_s),
        "prompt_eval_count": result.prompt_tokens,
    }


@router.post("/api/embeddings")
async def embeddings(request: Request):
    req = await read_body(request, EmbeddingsRequest)
    refuse(req.unsupported())
    check_embedding_model(req.model)
    if not req.prompt:
        return {"embedding": []}
    model = embedding_model(request)
    result = await embed_admitted(request, lambda: model.embed([req.prompt], truncate=True))
    return {"embedding": result.vectors[0].tolist()}


# ---- model management: not served ---------------------------------------------------------------------------------


async def _not_served(request: Request):
    raise APIError(501, f"{request.url.path} is not served: this server serves the models of its registry (GET "
                        f"/api/tags); add one with finetune or quantize, or as a folder in model_dirs", "not_supported")


for _path, _method in (("/api/pull", "POST"), ("/api/push", "POST"), ("/api/create", "POST"), ("/api/copy", "POST"),
                       ("/api/delete", "DELETE")):
    router.add_api_route(_path, _not_served, methods=[_method], include_in_schema=False)
