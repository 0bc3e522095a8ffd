"""Server settings, read from a YAML file (`serve --config server.yaml`) by the config binder: unknown keys are
errors that name them. `serve`'s flags are generated from these fields, documented by the string under each."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from finetune.config_binding import bind, check_choice, load_config
from finetune.data.chatlog_db import describe, is_postgres
from finetune.home import chat_log_path

Backend = Literal["auto", "torch", "openvino"]


@dataclass
class Limits:
    max_body_bytes: int = 1_000_000
    """Largest request body in bytes; 413 above."""
    max_prompt_tokens: int = 2048
    """Longest prompt in tokens; 400 above."""
    max_tokens: int = 1024
    """The largest max_tokens a request may ask for; 400 above."""
    max_concurrent: int | None = None
    """Requests generating at once; null: the backend's (torch 1, openvino 8 with continuous batching)."""
    max_queue: int = 16
    """Requests waiting for a slot; 429 beyond."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "max_concurrent":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if f.name == "max_queue" else 1):
                raise ValueError(f"limits.{f.name} must be a positive integer, got {value!r}")


@dataclass
class ChatLogSettings:
    enabled: bool = True
    """Write every conversation (and its feedback) to the log the improvement loop learns from."""
    path: str = field(default_factory=lambda: str(chat_log_path()))
    """The SQLite log file (when url is null); default: chatlog.sqlite in NEURALCHAT_HOME."""
    url: str | None = None
    """A PostgreSQL log shared by replicas behind a balancer, postgresql://user@host:5432/db (needs psycopg: the
    `postgres` extra); the password from PGPASSWORD or ~/.pgpass rather than the URL. null: the SQLite file at path."""
    redact: list[str] = field(default_factory=list)
    """PII kinds to mask before storing: email, url, ip, card, phone (phone needs `phonenumbers`)."""
    phone_region: str = "US"
    """How phone numbers without a country code are read (ISO 3166 region, e.g. US, GB, DE)."""

    def __post_init__(self):
        if self.url is not None and not is_postgres(self.url):
            raise ValueError(f"chat_log.url must be a postgresql:// (or postgres://) URL, got {describe(self.url)!r}; "
                             "for an SQLite log set chat_log.path instead")

    @property
    def target(self) -> str:
        """Where the log is: the PostgreSQL URL, else the SQLite path (what ChatLog and export-log take)."""
        return self.url or self.path


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    """Interface to listen on: loopback unless the operator says otherwise (0.0.0.0 with api_keys: a network)."""
    port: int = 8000
    """TCP port."""
    model: str | None = None
    """Embedded name, HF folder, fine-tune output folder (its merged/ is used) or OpenVINO folder; null: the
    embedded default model."""
    backend: Backend = "auto"
    """auto: openvino for an OpenVINO folder, else torch (bf16 where the CPU has it)."""
    allow_download: bool = False
    """A hub id that is not in the Hugging Face cache is downloaded at start (else an error says how)."""
    trust_remote_code: bool = False
    """Run the model repo's own code (models that ship it)."""
    model_dirs: list[str] | None = None
    """Folders the registry lists (fine-tune outputs, OpenVINO exports); null: the OpenVINO export cache."""
    allow_model_switch: bool = True
    """A request naming another registry model loads it, without a restart (with keys configured: an admin key's)."""
    adapters: dict[str, str] = field(default_factory=dict)
    """LoRA adapters served on the loaded model with one copy of its weights (torch backend): {name: adapter folder
    or fine-tune run folder}; a request's "model" names one, the model's own id the base alone."""
    discover_adapters: bool = True
    """Also serve, under the run's name, each fine-tune in model_dirs whose adapter was trained on the loaded model
    (its adapter_config.json's base_model_name_or_path), instead of loading its merged copy."""
    api_keys: list[str] | str = field(default_factory=list)
    """Non-empty: requests need "Authorization: Bearer <key>"; NEURALCHAT_API_KEYS=k1,k2 adds keys."""
    admin_keys: list[str] | str = field(default_factory=list)
    """Keys that may also load another full model (a request naming one, POST /api/models/active): with keys
    configured, any other key gets 403 for that; NEURALCHAT_ADMIN_KEYS=k1,k2 adds keys."""
    system_prompt: str | None = None
    """System message put before every conversation; null: the model's own."""
    thinking: bool | None = None
    """A thinking model's reasoning when a request does not say (Qwen 3, Qwen 3.5, Gemma 4): false answers at once,
    without the reasoning tokens such a model writes first, each a decode step on the CPU; null: the model's own
    default. Not applied to a model that cannot follow it."""
    limits: Limits = field(default_factory=Limits)
    """How large and how many requests are served."""
    chat_log: ChatLogSettings = field(default_factory=ChatLogSettings)
    """The conversation log."""
    plugins: dict = field(default_factory=dict)
    """Chatbot plugins, as in PipelineConfig: {"retrieval": {"enable": true, "args": {"input_path": "docs/"}}}."""

    def __post_init__(self):
        check_choice("ServerSettings.backend", self.backend, Backend)
        if isinstance(self.limits, dict):
            self.limits = bind(Limits, self.limits, "limits")
        if isinstance(self.chat_log, dict):
            self.chat_log = bind(ChatLogSettings, self.chat_log, "chat_log")
        self.api_keys = _keys(self.api_keys, "NEURALCHAT_API_KEYS")
        self.admin_keys = _keys(self.admin_keys, "NEURALCHAT_ADMIN_KEYS")
        for name, path in self.adapters.items():
            if name in ("", "default") or not str(path).strip():
                raise ValueError(f"adapters.{name or '<empty>'}: an adapter needs a name other than '' and 'default' "
                                 f"(which name the loaded model) and a folder, got {path!r}")

    @property
    def keys_configured(self) -> bool:
        """Whether requests need a key: then only an admin key may load another full model."""
        return bool(self.api_keys or self.admin_keys)


def _keys(keys: list[str] | str, env: str) -> list[str]:
    """The keys of a setting (one or a list) plus those of environment variable `env` (comma-separated)."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    return [*keys, *(k.strip() for k in os.environ.get(env, "").split(",") if k.strip())]


def load_settings(path: str | Path | None = None, overrides: Iterable = (), **values) -> ServerSettings:
    """Settings from a YAML file (if given), then `values` that are not None (whole top-level keys), then
    `overrides` (`limits.max_queue=32` texts, or (keys, value) pairs: what `serve`'s flags give)."""
    return load_config(ServerSettings, path, overrides, values={k: v for k, v in values.items() if v is not None})
