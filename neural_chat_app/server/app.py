"""Build the FastAPI app: load the model, wire routes, errors, the web page and the log."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from neural_chat_app.chatlog import ChatLog
from neural_chat_app.config import PipelineConfig
from neural_chat_app.plugins import build_plugin_pipeline, resolve_plugins
from neural_chat_app.server import app_routes, embedding_routes, extract_routes, generation_routes, ollama_routes
from neural_chat_app.server.admission import Admission
from neural_chat_app.server.errors import APIError, error_response
from neural_chat_app.server.metrics import Metrics
from neural_chat_app.server.models import ModelManager
from neural_chat_app.server.settings import ServerSettings
from neural_chat_app.server.state import ServerState

logger = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent.parent / "static"


def pipeline_config(settings: ServerSettings) -> PipelineConfig:
    """The chatbot configuration of the model the server starts with."""
    from neural_chat_app.config import LoadingModelConfig

    loading = LoadingModelConfig(trust_remote_code=settings.trust_remote_code, allow_download=settings.allow_download)
    return PipelineConfig(model_name_or_path=settings.model, backend=settings.backend, loading_config=loading)


def default_loader(config: PipelineConfig, max_concurrency: int | None = None):
    """The backend of `config`, running `max_concurrency` requests at once (limits.max_concurrent; None: the
    backend's own): the memory estimate before loading counts a KV cache for each."""
    from neural_chat_app.loading import load_backend

    return load_backend(config, max_concurrency)


def create_app(settings: ServerSettings, backend=None, loader: Callable | None = None) -> FastAPI:
    """The server app. `backend` (already loaded) and `loader` (PipelineConfig -> backend) are for tests."""
    loader = loader or functools.partial(default_loader, max_concurrency=settings.limits.max_concurrent)
    if backend is None:
        backend = loader(pipeline_config(settings))
    limits = settings.limits
    admission = Admission(limits.max_concurrent or backend.max_concurrency, limits.max_queue)
    models = ModelManager.from_settings(backend, settings, loader)
    log = settings.chat_log
    chatlog = ChatLog(log.target, log.redact, log.phone_region) if log.enabled else None
    plugins = build_plugin_pipeline(resolve_plugins(settings.plugins, use_global=False))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        models.active.close()
        if chatlog is not None:
            chatlog.close()
        if plugins is not None:
            plugins.close()

    app = FastAPI(title="neural_chat_app", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = ServerState(settings, models, admission, Metrics(), chatlog, plugins)
    app.include_router(generation_routes.router)
    app.include_router(embedding_routes.router)
    app.include_router(ollama_routes.router)  # Ollama's API; its errors are {"error": msg}
    app.include_router(app_routes.router)
    app.include_router(app_routes.public)
    app.include_router(extract_routes.router)  # the browser extraction page of web artifacts
    _install_error_handlers(app)

    app.add_middleware(CountRequests, metrics=app.state.server.metrics)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return error_response(err.status, err.message, err.code, err.param)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"loc": [], "msg": str(err)}
        param = ".".join(str(p) for p in first["loc"])
        return error_response(400, f"Invalid request: {param}: {first['msg']}", "invalid_value", param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return error_response(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        logger.exception("Unhandled error on %s", request.url.path)
        return error_response(500, f"Internal error: {type(err).__name__}: {err}", "internal_error")


class CountRequests:
    """Pure ASGI middleware counting responses by route and status. (BaseHTTPMiddleware would hide the
    client's disconnect from streaming responses, and generation would run on after the client left.)"""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_and_count(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            route = scope.get("route")
            self.metrics.count_request(getattr(route, "path", "other"), status["code"])
