"""What the route handlers share: settings, the model manager, the queue, metrics and the log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError

from neural_chat_app.chatlog import ChatLog
from neural_chat_app.server.admission import Admission
from neural_chat_app.server.errors import APIError
from neural_chat_app.server.metrics import Metrics
from neural_chat_app.server.models import ModelManager, caller_role
from neural_chat_app.server.settings import ServerSettings


@dataclass
class ServerState:
    settings: ServerSettings
    models: ModelManager
    admission: Admission
    metrics: Metrics
    chatlog: ChatLog | None
    plugins: Any = None  # a plugins.pipeline.PluginPipeline (retrieval, safety checker) or None


def get_state(request: Request) -> ServerState:
    return request.app.state.server


async def check_api_key(request: Request) -> None:
    """A FastAPI dependency: with api_keys or admin_keys configured, require `Authorization: Bearer <key>`, and
    record whether it is an admin key (models.caller_role, read where a request would load another model). Async, so
    that the role is set in the request's own context, not in a worker thread's."""
    settings = get_state(request).settings
    if not settings.keys_configured:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else None
    if token in settings.admin_keys:
        caller_role.set("admin")
    elif token in settings.api_keys:
        caller_role.set("user")
    else:
        raise APIError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key")


# A body over max_body_bytes is still read to its end (and dropped) up to this many bytes, so that the client,
# still sending, reads our 413 instead of a connection reset; a larger one is cut off unread.
DRAIN_BYTES = 64 * 1024 * 1024


async def read_body(request: Request, model: type[BaseModel]):
    """Parse a JSON body into `model` under the size limit: 413 when too big, 400 when malformed (not UTF-8, not
    JSON, nested too deep, a lone surrogate in a string) or mistyped."""
    limit = get_state(request).settings.limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        if int(declared) <= DRAIN_BYTES:
            await _drain(request)
        raise APIError(413, f"Request body is {declared} bytes; the limit is {limit}", "request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            await _drain(request)
            raise APIError(413, f"Request body is over the limit of {limit} bytes", "request_too_large")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(400, f"The request body is not valid UTF-8 (byte {err.start}): send JSON encoded as UTF-8",
                       "invalid_json") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise APIError(400, "The request body is nested too deeply to parse", "invalid_json") from None
    except ValueError as err:
        raise APIError(400, f"The request body is not valid JSON: {err}", "invalid_json") from err
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object", "invalid_json")
    bad = _lone_surrogate(data)
    if bad is not None:
        raise APIError(400, f"Invalid request: {bad}: the text holds a lone surrogate (an escaped \\ud800-\\udfff "
                            f"without its pair), which is not Unicode text", "invalid_value", bad)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise APIError(400, f"Unsupported field: {param}: this server does not implement it, so it refuses it "
                                f"rather than ignore it; remove it (the README's server section lists the supported "
                                f"fields)", "unsupported_field", param) from None
        raise APIError(400, f"Invalid request: {param}: {first['msg']}", "invalid_value", param) from err


async def _drain(request: Request) -> None:
    """Read the rest of the body and drop it, up to DRAIN_BYTES in all. From the ASGI channel itself: a stream
    already started (the chunked case) cannot be iterated again."""
    seen = 0
    while seen <= DRAIN_BYTES:
        message = await request.receive()
        if message["type"] != "http.request":  # the client left
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _lone_surrogate(data: Any) -> str | None:
    """The dotted path of the first string (value or key) that cannot be encoded as UTF-8, or None. Iterative:
    the parsed body may be nested as deep as the JSON parser allows."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path or "(body)"
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((f"{path}.{key}" if path else str(key), key))
                stack.append((f"{path}.{key}" if path else str(key), item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), item) for i, item in enumerate(value))
    return None
