"""The models this host can serve: the embedded default, fine-tune outputs, OpenVINO exports and quantize artifacts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from finetune.run_folder import is_run_folder, read_training_metadata, run_name


@dataclass(frozen=True)
class ModelEntry:
    id: str
    path: str  # what PipelineConfig.model_name_or_path takes
    kind: str  # "embedded" | "finetuned" | "openvino" | "huggingface" | "quantized" | "adapter" (served on a base)
    backend: str  # the backend "auto" picks for it
    metadata: dict = field(default_factory=dict)
    parent: str | None = None  # kind "adapter": the id of the loaded base it is served on

    def as_dict(self) -> dict:
        parent = {"parent": self.parent} if self.parent else {}
        return {"id": self.id, "path": self.path, "kind": self.kind, "backend": self.backend, **parent,
                **self.metadata}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def describe_folder(path: Path) -> ModelEntry | None:
    """What `path` holds, or None when it is not a model folder."""
    from quantize.artifacts import QUANTIZATION_METADATA_FILE
    from quantize.openvino import OPENVINO_EXPORT_FILE, is_openvino_folder

    quantized = _read_json(path / QUANTIZATION_METADATA_FILE)  # an artifact of quantize_model
    summary = {k: quantized.get(k) for k in ("backend", "tag", "bits", "weight_bytes", "quality") if k in quantized}
    if is_openvino_folder(path):
        return ModelEntry(path.name, str(path), "openvino", "openvino",
                          _read_json(path / OPENVINO_EXPORT_FILE) or summary)
    if quantized.get("backend") == "web":
        return None  # ONNX for the browser: served to the page at /extract (server/extract_routes.py), not chat
    if quantized.get("backend") in ("inc", "gguf"):
        return ModelEntry(path.name, str(path), "quantized", "torch", summary)
    if is_run_folder(path):
        return ModelEntry(path.name, str(path), "finetuned", "torch", read_training_metadata(path))
    if (path / "config.json").is_file():
        config = _read_json(path / "config.json")
        meta = {"model_type": config.get("model_type"), **_read_json(path / "source.json")}
        return ModelEntry(path.name, str(path), "huggingface", "torch", meta)
    return None


def default_model_dirs() -> list[Path]:
    from finetune.models import cache_home

    return [cache_home() / "openvino", cache_home() / "quantized"]


def list_models(model_dirs: list[str | Path] | None = None, extra: list[str] | None = None) -> list[ModelEntry]:
    """Embedded models first, then `extra` (e.g. the model a server was started with), then each folder's
    model subfolders. Ids are unique: the first entry with a name wins."""
    from finetune.models import EMBEDDED_MODELS

    entries = [
        ModelEntry(m.name, m.name, "embedded", "torch", {"description": m.description, "package": m.package})
        for m in EMBEDDED_MODELS.values()
    ]
    promoted = promoted_entry()
    if promoted is not None:
        entries.append(promoted)
    for name in extra or []:
        path = Path(name).expanduser()
        found = describe_folder(path) if path.is_dir() else None
        if found is not None:
            entries.append(replace(found, id=run_name(path)))  # run/merged is listed as "run"
    dirs = [Path(d).expanduser() for d in (model_dirs if model_dirs is not None else default_model_dirs())]
    for folder in dirs:
        if folder.is_dir():
            for child in sorted(folder.iterdir()):
                found = describe_folder(child) if child.is_dir() and ".tmp-" not in child.name else None
                if found is not None:
                    entries.append(found)
    unique: dict[str, ModelEntry] = {}
    for entry in entries:
        unique.setdefault(entry.id, entry)
    return list(unique.values())


def promoted_entry() -> ModelEntry | None:
    """The model `python -m neural_chat_app improve` promoted last, listed under the id "promoted"."""
    from finetune.models import cache_home

    record = _read_json(cache_home() / "models" / "promoted.json")
    path = Path(record.get("model", "")) if record else None
    found = describe_folder(path) if path is not None and path.is_dir() else None
    if found is None:
        return None
    return ModelEntry("promoted", str(path), found.kind, found.backend, {**found.metadata, "promoted": record})


def find_model(entries: list[ModelEntry], model_id: str) -> ModelEntry | None:
    return next((e for e in entries if e.id == model_id), None)
