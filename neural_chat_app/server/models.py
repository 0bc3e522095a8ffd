"""The served model and switching it while the server runs.

Requests take a lease on the backend they start with, so a switch never pulls a model from under a stream:
the old backend is closed when its last lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from neural_chat_app.config import PipelineConfig
from neural_chat_app.registry import ModelEntry, find_model, list_models
from neural_chat_app.server.errors import APIError
from neural_chat_app.streaming import Backend

logger = logging.getLogger(__name__)
DEFAULT_ALIASES = ("", "default")


class ModelManager:
    def __init__(self, backend: Backend, model_dirs, start_model: str | None, loader: Callable, allow_switch: bool):
        self.active = backend
        self.model_dirs = model_dirs
        self.start_model = start_model
        self.loader = loader  # PipelineConfig -> Backend
        self.allow_switch = allow_switch
        self._leases: dict[int, int] = {}
        self._retired: dict[int, Backend] = {}
        self._switch_lock = asyncio.Lock()

    def entries(self) -> list[ModelEntry]:
        extra = [self.start_model] if self.start_model else []
        entries = list_models(self.model_dirs, extra)
        if find_model(entries, self.active.model_id) is None:  # e.g. a test backend or a model given by hub path
            entries.insert(0, ModelEntry(self.active.model_id, self.active.model_id, "loaded", self.active.kind))
        return entries

    async def resolve(self, model: str | None) -> Backend:
        """The backend serving `model`: the active one, or a registry model loaded now (a switch)."""
        if model is None or model in DEFAULT_ALIASES or model == self.active.model_id:
            return self.active
        entry = find_model(self.entries(), model)
        if entry is None:
            raise APIError(404, f"The model {model!r} does not exist; GET /v1/models lists them", "model_not_found")
        if not self.allow_switch:
            raise APIError(
                404, f"The model {model!r} is not loaded and this server does not switch models", "model_not_found"
            )
        await self.switch(entry)
        return self.active

    async def switch(self, entry: ModelEntry) -> None:
        async with self._switch_lock:
            if entry.id == self.active.model_id:
                return
            logger.info("Switching model %s -> %s", self.active.model_id, entry.id)
            config = PipelineConfig(model_name_or_path=entry.path, backend=entry.backend)
            try:
                new = await asyncio.to_thread(self.loader, config)
            except Exception as err:
                raise APIError(400, f"Could not load model {entry.id!r}: {err}", "model_load_failed") from err
            old, self.active = self.active, new
            self._retire(old)

    def _retire(self, backend: Backend) -> None:
        if self._leases.get(id(backend), 0):
            self._retired[id(backend)] = backend
        else:
            backend.close()

    @contextlib.contextmanager
    def lease(self, backend: Backend):
        key = id(backend)
        self._leases[key] = self._leases.get(key, 0) + 1
        try:
            yield backend
        finally:
            self._leases[key] -= 1
            if not self._leases[key]:
                del self._leases[key]
                retired = self._retired.pop(key, None)
                if retired is not None:
                    retired.close()
