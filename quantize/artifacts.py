"""Artifact folders: where the source model is, what the folder is called, its quantization.json, its size."""

from __future__ import annotations

import json
from pathlib import Path

from finetune.home import staging  # noqa: F401 (quantize's exporters write through it)
from finetune.run_folder import run_name, run_weights

QUANTIZATION_METADATA_FILE = "quantization.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".onnx")


def resolve_source(model: str | None, allow_download: bool = False) -> Path:
    """The Hugging Face folder to quantize: a folder, a `finetune_model` output (its merged/), or an embedded name.

    Raises ValueError for an artifact that is quantized already.
    """
    from finetune.models import DEFAULT_MODEL, resolve_model_path

    name = model or DEFAULT_MODEL
    path = Path(name).expanduser()
    if path.is_dir():
        refuse_quantized(path)
        weights = run_weights(path)
        if weights is not None and weights.merged is not None:
            path = weights.merged
        elif weights is not None:
            raise ValueError(
                f"{path} holds a LoRA adapter but no merged/ model: quantize a merged model (finetune_model writes "
                "<out>/merged/ unless merging was turned off)"
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
        return path.resolve()
    if path.suffix == ".gguf" and path.is_file():
        raise ValueError(f"{path} is a GGUF file, already quantized or exported: quantize the source model instead")
    return Path(resolve_model_path(name, allow_download))


def refuse_quantized(path: Path) -> None:
    """ValueError when `path` is already a quantized artifact (ours, INC's, OpenVINO's, GGUF or HF-quantized)."""
    reason = None
    if (path / QUANTIZATION_METADATA_FILE).is_file():
        meta = json.loads((path / QUANTIZATION_METADATA_FILE).read_text())
        reason = f"it is a {meta.get('backend')} {meta.get('tag')} artifact of {meta.get('source_model')}"
    elif (path / "openvino_model.xml").is_file():
        reason = "it is an OpenVINO IR folder"
    elif (path / "qconfig.json").is_file():
        reason = "it holds a Neural Compressor quantized model (qconfig.json)"
    elif list(path.glob("*.gguf")):
        reason = "it holds a GGUF file"
    elif (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        if config.get("quantization_config"):
            method = config["quantization_config"].get("quant_method", "unknown")
            reason = f"its config.json has a quantization_config ({method})"
    if reason:
        raise ValueError(
            f"{path} is already quantized: {reason}. Quantizing twice compounds the rounding error; quantize the "
            "source model (the fine-tune output or the original Hugging Face folder) instead"
        )


def artifact_name(source: Path, tag: str, suffix: str) -> str:
    return f"{run_name(source)}-{tag}-{suffix}"


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def weight_bytes(path: Path) -> int:
    """Bytes of the weight files only (OpenVINO .bin, safetensors, INC .pt, GGUF): tokenizers excluded."""
    from finetune.models import safetensors_files

    total = 0
    loaded = {f for folder in {f.parent for f in path.rglob("*.safetensors")} for f in safetensors_files(folder)}
    for f in path.rglob("*"):
        if f.is_file() and f.suffix in WEIGHT_SUFFIXES and not f.name.startswith("openvino_tokenizer") and not (
            f.name.startswith("openvino_detokenizer")
        ) and (f.suffix != ".safetensors" or f in loaded):  # not a second copy of the weights
            total += f.stat().st_size
    return total


def read_metadata(path: str | Path) -> dict:
    path = Path(path)
    file = path / QUANTIZATION_METADATA_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} has no {QUANTIZATION_METADATA_FILE}: not an artifact written by quantize_model")
    return json.loads(file.read_text())


def write_metadata(path: Path, metadata: dict) -> None:
    (path / QUANTIZATION_METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n")


def list_artifacts(folder: str | Path) -> list[Path]:
    """Artifact folders (with quantization.json) directly under `folder`, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and ".tmp-" not in p.name and (p / QUANTIZATION_METADATA_FILE).is_file())
