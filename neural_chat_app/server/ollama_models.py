"""What Ollama's /api/tags, /api/show and /api/ps say about a model: read from its folder (config, safetensors
headers, chat template) and, when it is loaded, from its backend; nothing is loaded or fetched for it."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from fastapi import Request

from neural_chat_app.config import GenerationConfig
from neural_chat_app.registry import ModelEntry
from neural_chat_app.server.embedding_routes import EMBEDDING_MODEL_ID

ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: what Ollama writes for an unknown date
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pth", ".xml")


def ollama_name(model_id: str) -> str:
    """Ollama's names always carry a tag; an untagged id is listed as '<id>:latest' (and accepted either way)."""
    return model_id if ":" in model_id else f"{model_id}:latest"


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def model_folder(entry: ModelEntry) -> Path | None:
    """The folder holding the entry's weights, found without loading or fetching anything."""
    from finetune.home import cache_home
    from finetune.run_folder import run_weights

    path = Path(entry.path).expanduser()
    if path.is_dir():
        weights = run_weights(path)
        return weights.merged if weights is not None and weights.merged is not None else path
    if entry.kind == "embedded":  # its GGUF converted once into a folder (finetune/models.py)
        folder = cache_home() / "models" / entry.id
        return folder if folder.is_dir() else None
    return None


def embedding_folder() -> Path | None:
    """The packaged embedding model's folder when it is on disk (installed or fetched); never fetches."""
    from finetune.home import cache_home
    from finetune.model_packages import EMBEDDING_MODEL, fetched_folder, installed_folder

    module, requirement = EMBEDDING_MODEL
    folder = installed_folder(module) or fetched_folder(module, requirement, cache_home())
    return folder / "model" if (folder / "model" / "config.json").is_file() else None


def safetensors_summary(folder: Path) -> tuple[int, str | None]:
    """(parameter count, the dtype most of them have) from the safetensors headers: no weights are read."""
    from finetune.models import safetensors_files

    count, dtypes = 0, Counter()
    for file in safetensors_files(folder):
        try:
            with file.open("rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(size)) if 0 < size < 100_000_000 else {}
        except (OSError, ValueError):
            continue
        for name, tensor in header.items():
            if name != "__metadata__" and isinstance(tensor, dict):
                n = math.prod(tensor.get("shape", []))
                count += n
                dtypes[tensor.get("dtype")] += n
    return count, (dtypes.most_common(1)[0][0] if dtypes else None)


def parameter_size(count: int) -> str:
    if not count:
        return ""
    if count >= 1e9:
        return f"{count / 1e9:.1f}B"
    if count >= 1e6:
        return f"{count / 1e6:.2f}M"
    return f"{count / 1e3:.2f}K"


_DTYPES = {"torch.float32": "F32", "torch.bfloat16": "BF16", "torch.float16": "F16"}


def model_facts(entry_id: str, entry: ModelEntry | None, folder: Path | None, backend=None) -> dict:
    """What Ollama's tags, show and ps say about a model, from its folder and, when loaded, its backend."""
    config = read_json(folder / "config.json") if folder else {}
    count, dtype = safetensors_summary(folder) if folder else (0, None)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.suffix in _WEIGHT_SUFFIXES) if folder else 0
    template = None
    model = getattr(backend, "model", None)  # a torch backend's module
    if backend is not None:
        template = getattr(backend.tokenizer, "chat_template", None)
        size = getattr(backend, "weight_bytes", None) or size
        if hasattr(model, "parameters"):
            params = list(model.parameters())
            count = count or sum(p.numel() for p in params)
            dtype = _DTYPES.get(str(params[0].dtype), dtype) if params else dtype
        if not config and hasattr(getattr(model, "config", None), "to_dict"):
            config = model.config.to_dict()
    if template is None and folder:
        template = read_json(folder / "tokenizer_config.json").get("chat_template")
        if template is None and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
    if isinstance(config.get("text_config"), dict):  # multimodal (Gemma 3 4B up): the sizes are its language model's
        config = {**config["text_config"], **{k: v for k, v in config.items() if k != "text_config"}}
    meta = entry.metadata if entry else {}
    quantization = meta.get("tag") or (f"INT{meta['bits']}" if meta.get("bits") else None)
    quantization = quantization or meta.get("weight_format") or dtype or ""
    stamp = folder.stat().st_mtime if folder else None
    digest = hashlib.sha256(f"{entry_id}|{folder}|{stamp}".encode()).hexdigest()
    family = config.get("model_type") or ""
    return {
        "family": family,
        "parameter_count": count,
        "config": config,
        "template": template if isinstance(template, str) else "",
        "size": int(size or 0),
        "digest": digest,
        "modified_at": (datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                        if stamp else ZERO_TIME),
        "details": {
            "parent_model": "",
            "format": "openvino" if entry is not None and entry.backend == "openvino" else "safetensors",
            "family": family,
            "families": [family] if family else None,
            "parameter_size": parameter_size(count),
            "quantization_level": str(quantization),
        },
    }


def chat_model_facts(entry: ModelEntry, active) -> dict:
    return model_facts(entry.id, entry, model_folder(entry), active if entry.id == active.model_id else None)


def embedding_facts(request: Request) -> dict:
    model = getattr(request.app.state, "embedding_model", None)
    return model_facts(EMBEDDING_MODEL_ID, None, embedding_folder(), model.embedder if model is not None else None)


def tag(name: str, facts: dict) -> dict:
    keys = ("modified_at", "size", "digest", "details")
    return {"name": ollama_name(name), "model": ollama_name(name), **{k: facts[k] for k in keys}}


def default_parameters() -> str:
    """The sampling defaults a request without options gets, as Modelfile PARAMETER lines."""
    d = GenerationConfig()
    values = {"temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p,
              "repeat_penalty": d.repetition_penalty, "num_predict": d.max_new_tokens}
    return "\n".join(f"{k:<16}{v}" for k, v in values.items())


def model_info(name: str, facts: dict) -> dict:
    config, family = facts["config"], facts["family"] or "unknown"
    info = {"general.architecture": family, "general.basename": name,
            "general.parameter_count": facts["parameter_count"]}
    for key, config_key in (("context_length", "max_position_embeddings"), ("embedding_length", "hidden_size"),
                            ("block_count", "num_hidden_layers"), ("attention.head_count", "num_attention_heads"),
                            ("attention.head_count_kv", "num_key_value_heads"), ("vocab_size", "vocab_size")):
        if config.get(config_key) is not None:
            info[f"{family}.{key}"] = config[config_key]
    return info
