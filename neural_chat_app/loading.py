"""From a PipelineConfig to a loaded backend: find the weights, pick the backend, dtype and device."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from neural_chat_app.config import QUANTIZE_ISSUE, MixedPrecisionConfig, PipelineConfig, WeightOnlyQuantConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    path: Path  # a Hugging Face folder or an OpenVINO IR folder
    model_id: str
    is_openvino: bool
    peft_path: Path | None = None


def _finetune_output(path: Path) -> tuple[Path, Path | None] | None:
    """A `finetune_model` output dir: prefer merged/, else base model + adapter/."""
    if (path / "merged" / "config.json").is_file():
        return path / "merged", None
    adapter = path / "adapter"
    if (adapter / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise FileNotFoundError(f"{adapter} names no base_model_name_or_path: pass model_name_or_path=<base>")
        return Path(base), adapter
    return None


def model_id_for(name: str) -> str:
    path = Path(name).expanduser()
    if not path.exists():
        return name
    path = path.resolve()
    return path.parent.name if path.name in ("merged", "adapter") else path.name


def resolve_source(config: PipelineConfig) -> ModelSource:
    from finetune.models import DEFAULT_MODEL, resolve_model_path
    from quantize.openvino import is_openvino_folder

    name = config.model_name_or_path or DEFAULT_MODEL
    peft_path = Path(config.loading_config.peft_path) if config.loading_config.peft_path else None
    path = Path(name).expanduser()
    if path.is_dir() and is_openvino_folder(path):
        return ModelSource(path, model_id_for(name), True, peft_path)
    if path.is_dir():
        found = _finetune_output(path)
        if found:
            path, peft_path = found[0], peft_path or found[1]
    local = Path(resolve_model_path(str(path) if path.exists() else name))
    return ModelSource(local, model_id_for(name), False, peft_path)


def torch_dtype(config: PipelineConfig, device: str):
    import torch

    from finetune.hardware import detect_hardware

    opt = config.optimization_config
    if not isinstance(opt, MixedPrecisionConfig):
        return torch.float32 if device == "cpu" else torch.bfloat16
    if opt.dtype == "float32":
        return torch.float32
    if device == "cpu" and opt.dtype == "float16":
        raise ValueError("MixedPrecisionConfig.dtype='float16' has no fast CPU kernels: use 'bfloat16' on CPU")
    if device == "cpu" and not detect_hardware().cpu_bf16:
        warnings.warn(
            "MixedPrecisionConfig asks for bf16, but this CPU has neither AMX nor AVX512-BF16: running in fp32.",
            stacklevel=3,
        )
        return torch.float32
    return torch.float16 if opt.dtype == "float16" else torch.bfloat16


def resolve_device(device: str) -> str:
    from finetune.hardware import default_device

    if device == "auto":
        return default_device()
    if device == "gpu":
        return "cuda"
    if device in ("xpu", "hpu"):
        raise NotImplementedError(f"PipelineConfig.device={device!r} is not supported: use 'cpu' or 'cuda'")
    return device


def openvino_cache_dir(source: Path) -> Path:
    from finetune.models import cache_home

    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    return cache_home() / "openvino" / f"{source.name}-{digest}"


def load_torch(source: ModelSource, config: PipelineConfig, max_concurrency: int = 1):
    from finetune.models import load_model, load_tokenizer
    from neural_chat_app.torch_backend import TorchBackend

    device = resolve_device(config.device)
    kwargs = {"trust_remote_code": config.loading_config.trust_remote_code}
    if type(config.optimization_config).__name__ == "BitsAndBytesConfig":
        kwargs["quantization_config"] = config.optimization_config
    model = load_model(str(source.path), dtype=torch_dtype(config, device), **kwargs)
    if source.peft_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(source.peft_path)).merge_and_unload()
    if "quantization_config" not in kwargs:
        model = model.to(device)
    tokenizer = load_tokenizer(config.tokenizer_name_or_path or str(source.path))
    return TorchBackend(model, tokenizer, source.model_id, max_concurrency=max_concurrency)


def load_openvino(source: ModelSource, config: PipelineConfig, max_concurrency: int = 8):
    from neural_chat_app.openvino_backend import OpenVINOBackend
    from quantize.openvino import export_openvino, is_openvino_folder

    if source.peft_path is not None:
        raise NotImplementedError(
            "The OpenVINO backend loads merged models only: point model_name_or_path at the fine-tune output "
            "folder (its merged/ is used) instead of base + loading_config.peft_path"
        )
    folder = source.path
    if not source.is_openvino:
        folder = openvino_cache_dir(source.path)
        if not is_openvino_folder(folder):
            logger.warning("Exporting %s to OpenVINO at %s (once; 1-2 minutes)", source.path, folder)
            export_openvino(source.path, folder)
    return OpenVINOBackend(folder, source.model_id, max_concurrency=max_concurrency)


def load_backend(config: PipelineConfig, max_concurrency: int | None = None):
    """Load the model `config` names with the backend it asks for ("auto": OpenVINO for an IR folder)."""
    if isinstance(config.optimization_config, WeightOnlyQuantConfig):
        raise NotImplementedError(
            f"WeightOnlyQuantConfig is not implemented yet: it comes with {QUANTIZE_ISSUE}. Today, INT8/INT4 "
            f"weights run through OpenVINO: quantize.openvino.export_openvino(model_dir, out_dir, "
            f"weight_format='int4'), then PipelineConfig(model_name_or_path=out_dir, backend='openvino')."
        )
    source = resolve_source(config)
    backend = config.backend
    if backend == "auto":
        backend = "openvino" if source.is_openvino else "torch"
    if backend == "torch":
        if source.is_openvino:
            raise ValueError(f"{source.path} is an OpenVINO IR folder: use backend='openvino' or 'auto'")
        return load_torch(source, config, max_concurrency or 1)
    return load_openvino(source, config, max_concurrency or 8)
