"""Server settings, read from a YAML file (`serve --config server.yaml`); unknown keys are errors."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from finetune.home import chat_log_path

Backend = Literal["auto", "torch", "openvino"]


@dataclass
class Limits:
    max_body_bytes: int = 1_000_000  # 413 above
    max_prompt_tokens: int = 2048  # 400 above
    max_tokens: int = 1024  # the largest max_tokens a request may ask for; 400 above
    max_concurrent: int | None = None  # requests generating at once; None: the backend's (torch 1, openvino 8)
    max_queue: int = 16  # requests waiting for a slot; 429 beyond

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
    path: str = field(default_factory=lambda: str(chat_log_path()))  # default: chatlog.sqlite in NEURALCHAT_HOME
    redact: list[str] = field(default_factory=list)  # PII kinds to mask before storing: email, url, ip, card, phone
    phone_region: str = "US"  # how phone numbers without a country code are read


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"  # loopback unless the operator says otherwise
    port: int = 8000
    model: str | None = None  # None: the embedded default model
    backend: Backend = "auto"
    allow_download: bool = False  # a hub id not in the Hugging Face cache is downloaded at start
    trust_remote_code: bool = False  # run the model repo's own code (models that ship it)
    model_dirs: list[str] | None = None  # where the registry looks; None: the OpenVINO export cache
    allow_model_switch: bool = True
    api_keys: list[str] = field(default_factory=list)  # empty: no auth; also NEURALCHAT_API_KEYS=k1,k2
    system_prompt: str | None = None
    limits: Limits = field(default_factory=Limits)
    chat_log: ChatLogSettings = field(default_factory=ChatLogSettings)
    # Chatbot plugins, as in PipelineConfig: {"retrieval": {"enable": true, "args": {"input_path": "docs/"}}}
    plugins: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.backend not in get_args(Backend):
            raise ValueError(f"backend must be one of {get_args(Backend)}, got {self.backend!r}")
        if isinstance(self.limits, dict):
            self.limits = _build(Limits, self.limits, "limits")
        if isinstance(self.chat_log, dict):
            self.chat_log = _build(ChatLogSettings, self.chat_log, "chat_log")
        if isinstance(self.api_keys, str):
            self.api_keys = [self.api_keys]
        env_keys = os.environ.get("NEURALCHAT_API_KEYS")
        if env_keys:
            self.api_keys = [*self.api_keys, *(k.strip() for k in env_keys.split(",") if k.strip())]


def _build(cls, values: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"Unknown setting(s) in {where}: {sorted(unknown)}; known: {sorted(known)}")
    return cls(**values)


def load_settings(path: str | Path | None = None, **overrides) -> ServerSettings:
    """Settings from a YAML file (if given), then `overrides` that are not None (the CLI flags)."""
    values: dict = {}
    if path is not None:
        import yaml

        text = Path(path).read_text()
        values = yaml.safe_load(text) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of settings, got {type(values).__name__}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _build(ServerSettings, values, str(path or "settings"))
