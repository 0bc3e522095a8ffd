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
from neural_chat_app.server.models import ModelManager
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


def check_api_key(request: Request) -> None:
    """A FastAPI dependency: with api_keys configured, require `Authorization: Bearer <key>`."""
    keys = get_state(request).settings.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or token.strip() not in keys:
        raise APIError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key")


async def read_body(request: Request, model: type[BaseModel]):
    """Parse a JSON body into `model` under the size limit: 413 when too big, 400 when malformed or mistyped."""
    limit = get_state(request).settings.limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"Request body is {declared} bytes; the limit is {limit}", "request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"Request body is over the limit of {limit} bytes", "request_too_large")
    try:
        data = json.loads(body)
    except ValueError as err:
        raise APIError(400, f"The request body is not valid JSON: {err}", "invalid_json") from err
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object", "invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        raise APIError(400, f"Invalid request: {param}: {first['msg']}", "invalid_value", param) from err
