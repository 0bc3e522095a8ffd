"""The served model, the LoRA adapters served on it, and switching the model while the server runs.

The loaded model serves its own id (and "default"); each LoRA adapter of it (settings.adapters, and with
discover_adapters the registry's fine-tunes trained on it) is served by name on the same weights: naming one never
reloads anything (neural_chat_app/adapters.py). A request naming any other registry model loads it in place of the
loaded one for every client (a switch): with keys configured, only an admin key may do that (403 for the others).

Requests take a lease on the backend they start with, so a switch never pulls a model from under a stream:
the old backend is closed when its last lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path

from neural_chat_app.adapters import OPENVINO_REFUSAL, AdapterView, adapter_folder, adapter_tokenizer, fits_base
from neural_chat_app.config import PipelineConfig
from neural_chat_app.registry import ModelEntry, find_model, list_models
from neural_chat_app.server.errors import APIError
from neural_chat_app.streaming import Backend

logger = logging.getLogger(__name__)
DEFAULT_ALIASES = ("", "default")

# Who sent the request being handled: "admin" (an admin key), "user" (another key) or None (no keys configured).
# Set by state.check_api_key in the request's context; read here, where a request would load another model.
caller_role: ContextVar[str | None] = ContextVar("caller_role", default=None)


class ModelManager:
    def __init__(self, backend: Backend, model_dirs, start_model: str | None, loader: Callable, allow_switch: bool,
                 adapters: dict[str, str] | None = None, discover_adapters: bool = False, admin_only: bool = False):
        self.active = backend
        self.model_dirs = model_dirs
        self.start_model = start_model
        self.loader = loader  # PipelineConfig -> Backend
        self.allow_switch = allow_switch
        self.adapter_paths = dict(adapters or {})  # configured: {name: folder}
        self.discover_adapters = discover_adapters
        self.admin_only = admin_only  # keys are configured: only an admin key loads another full model
        self._leases: dict[int, int] = {}
        self._retired: dict[int, Backend] = {}
        self._switch_lock = asyncio.Lock()
        self.views: dict[str, AdapterView] = self._attach(backend, strict=True)  # the active model's adapters

    @classmethod
    def from_settings(cls, backend: Backend, settings, loader: Callable) -> ModelManager:
        return cls(backend, settings.model_dirs, settings.model, loader, settings.allow_model_switch,
                   settings.adapters, settings.discover_adapters, settings.keys_configured)

    def entries(self) -> list[ModelEntry]:
        extra = [self.start_model] if self.start_model else []
        entries = list_models(self.model_dirs, extra)
        if find_model(entries, self.active.model_id) is None:  # e.g. a test backend or a model given by hub path
            entries.insert(0, ModelEntry(self.active.model_id, self.active.model_id, "loaded", self.active.kind))
        by_id = {e.id: e for e in entries}
        for name, view in self.views.items():  # a run served as an adapter is listed as one, in its place
            listed = by_id.get(name)
            metadata = {**(listed.metadata if listed else {}), "adapter": str(view.folder)}
            by_id[name] = ModelEntry(name, listed.path if listed else str(view.folder), "adapter", self.active.kind,
                                     metadata, parent=self.active.model_id)
        return list(by_id.values())

    async def resolve(self, model: str | None) -> Backend:
        """The backend serving `model`: the active one, one of its adapters, or a registry model loaded now (a
        switch, which the caller's key must allow)."""
        if model is None or model in DEFAULT_ALIASES or model == self.active.model_id:
            return self.active
        view = self.views.get(model)
        if view is not None:
            return view
        entry = find_model(self.entries(), model)
        if entry is None:
            raise APIError(404, f"The model {model!r} does not exist; GET /v1/models lists them", "model_not_found")
        if not self.allow_switch:
            raise APIError(
                404, f"The model {model!r} is not loaded and this server does not switch models", "model_not_found"
            )
        if self.admin_only and caller_role.get() != "admin":
            served = ", ".join([self.active.model_id, *self.views])
            raise APIError(403, f"The model {model!r} is not loaded, and loading it replaces the served model for "
                                f"every client: only an admin key (admin_keys) may do that. This key may use the "
                                f"loaded models: {served}", "admin_key_required")
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
            views = await asyncio.to_thread(self._attach, new, False)
            old, self.active, self.views = self.active, new, views
            self._retire(old)

    def _attach(self, backend: Backend, strict: bool) -> dict[str, AdapterView]:
        """Attach to `backend` the configured adapters and (with discovery) the registry's fine-tunes trained on it;
        return a view per adapter. `strict` (at start): a configured adapter that cannot be served is an error;
        after a switch, adapters of the model before are left out with a log line."""
        candidates = {name: Path(path).expanduser() for name, path in self.adapter_paths.items()}
        configured = set(candidates)
        if self.discover_adapters:
            for entry in list_models(self.model_dirs):
                folder = adapter_folder(entry.path) if entry.kind == "finetuned" else None
                if folder is not None and entry.id not in candidates and entry.id != backend.model_id:
                    candidates[entry.id] = folder
        if not candidates:
            return {}
        if not hasattr(backend, "add_adapter"):  # the OpenVINO backend
            if strict and configured:
                raise NotImplementedError(f"adapters: {', '.join(sorted(configured))}: {OPENVINO_REFUSAL}")
            if configured:
                logger.warning("Not serving adapters on %s (%s): %s", backend.model_id, backend.kind, OPENVINO_REFUSAL)
            return {}
        base = str(Path(backend.base_path).resolve()) if getattr(backend, "base_path", None) else None
        views = {}
        for name, path in candidates.items():
            folder = adapter_folder(path)
            try:
                if folder is None:
                    raise ValueError(f"{path} holds no LoRA adapter (adapter_config.json, or a fine-tune run's "
                                     f"adapter/)")
                if base is None:
                    raise ValueError(f"{backend.model_id!r} is not served as a plain base model (an adapter merged "
                                     f"in, or quantized): serve the base model itself")
                unfit = fits_base(folder, base)
                if unfit is not None:
                    if name not in configured:
                        continue  # a fine-tune of another model: it stays a model of its own in the registry
                    raise ValueError(unfit)
                backend.add_adapter(name, folder)
            except Exception as err:
                if strict and name in configured:
                    raise ValueError(f"adapters.{name}: cannot serve {path} on {backend.model_id!r}: {err}") from err
                logger.warning("Not serving adapter %s on %s: %s", name, backend.model_id, err)
                continue
            views[name] = AdapterView(backend, name, folder, adapter_tokenizer(backend.tokenizer, folder))
        if views:
            logger.info("LoRA adapters on %s: %s", backend.model_id, ", ".join(views))
        return views

    def _retire(self, backend: Backend) -> None:
        if self._leases.get(id(backend), 0):
            self._retired[id(backend)] = backend
        else:
            backend.close()

    @contextlib.contextmanager
    def lease(self, backend: Backend):
        shared = backend.base if isinstance(backend, AdapterView) else backend  # a view streams on its base
        key = id(shared)
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

