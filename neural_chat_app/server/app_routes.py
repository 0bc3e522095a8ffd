"""Everything but generation: models, conversations, feedback, health, metrics."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from neural_chat_app.registry import find_model
from neural_chat_app.server.embedding_routes import EMBEDDING_MODEL_ID, embedding_model_listing
from neural_chat_app.server.errors import APIError
from neural_chat_app.server.schemas import EditRequest, FeedbackRequest, SwitchRequest
from neural_chat_app.server.state import check_api_key, get_state, read_body

router = APIRouter(dependencies=[Depends(check_api_key)])
public = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request):
    models = get_state(request).models
    data = [
        {
            "id": e.id,
            "object": "model",
            "created": 0,
            "owned_by": "local",
            "loaded": e.id == models.active.model_id,  # the full model; its adapters name it as their parent
            "parent": e.parent,  # an adapter's: the loaded model it is served on, without a switch (vLLM's field)
            "kind": e.kind,
            "backend": e.backend,
            "metadata": e.metadata,
        }
        for e in await anyio.to_thread.run_sync(models.entries)
    ]
    data.append(embedding_model_listing(request))  # serves /v1/embeddings, not generation
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: str):
    if model_id == EMBEDDING_MODEL_ID:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "local"}
    entry = find_model(await anyio.to_thread.run_sync(get_state(request).models.entries), model_id)
    if entry is None:
        raise APIError(404, f"The model {model_id!r} does not exist", "model_not_found", "model")
    return {"id": entry.id, "object": "model", "created": 0, "owned_by": "local"}


@router.post("/api/models/active")
async def switch_model(request: Request):
    """Load another registry model now; requests already streaming finish on the old one."""
    req = await read_body(request, SwitchRequest)
    backend = await get_state(request).models.resolve(req.model)
    return {"model": backend.model_id, "backend": backend.kind}


def _chatlog(request: Request):
    log = get_state(request).chatlog
    if log is None:
        raise APIError(404, "The conversation log is disabled on this server", "chat_log_disabled")
    return log


@router.get("/api/conversations")
async def conversations(request: Request):
    log = get_state(request).chatlog
    return {"data": [] if log is None else await anyio.to_thread.run_sync(log.sessions), "enabled": log is not None}


@router.get("/api/conversations/{session_id}")
async def conversation(request: Request, session_id: str):
    log = _chatlog(request)
    messages = await anyio.to_thread.run_sync(log.messages, session_id)
    if not messages and not await anyio.to_thread.run_sync(log.has_session, session_id):
        raise APIError(404, f"No conversation {session_id!r}", "conversation_not_found")
    return {"id": session_id, "messages": messages}


@router.post("/api/messages/{message_id}/feedback")
async def feedback(request: Request, message_id: int):
    log = _chatlog(request)
    req = await read_body(request, FeedbackRequest)
    if not await anyio.to_thread.run_sync(log.set_feedback, message_id, req.feedback):
        raise APIError(404, f"No assistant message with id {message_id}", "message_not_found")
    return {"id": message_id, "feedback": req.feedback}


@router.post("/api/messages/{message_id}/edit")
async def edit(request: Request, message_id: int):
    """The user's own text in place of a reply: logged as the kept reply, the original as superseded."""
    log = _chatlog(request)
    req = await read_body(request, EditRequest)
    try:
        new = await anyio.to_thread.run_sync(log.edit_reply, message_id, req.content)
    except LookupError as err:
        raise APIError(404, str(err), "message_not_found") from None
    return {"id": new, "replaces": message_id}


@router.post("/api/messages/{message_id}/keep")
async def keep(request: Request, message_id: int):
    """Make this reply the kept one of its turn (the page flips between a regenerated turn's replies)."""
    log = _chatlog(request)
    try:
        alternatives = await anyio.to_thread.run_sync(log.keep_reply, message_id)
    except LookupError as err:
        raise APIError(404, str(err), "message_not_found") from None
    return {"id": message_id, "alternatives": alternatives}


@public.get("/health")
async def health(request: Request):
    state = get_state(request)
    return {
        "status": "ok",
        "model": state.models.active.model_id,
        "backend": state.models.active.kind,
        "weight_bytes": getattr(state.models.active, "weight_bytes", None),
        "running": state.admission.running,
        "waiting": state.admission.waiting,
    }


@public.get("/metrics")
async def metrics(request: Request):
    state = get_state(request)
    text = state.metrics.render(state.admission.running, state.admission.waiting, state.models.active.model_id)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
