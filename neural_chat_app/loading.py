"""From a PipelineConfig to a loaded backend: find the weights, pick the backend, dtype and device."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from finetune.run_folder import run_name, run_weights
from neural_chat_app.config import MixedPrecisionConfig, PipelineConfig, WeightOnlyQuantConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    path: Path  # a Hugging Face folder or an OpenVINO IR folder
    model_id: str
    is_openvino: bool
    peft_path: Path | None = None


def model_id_for(name: str) -> str:
    path = Path(name).expanduser()
    if not path.exists():
        return name
    return run_name(path.resolve())


def resolve_source(config: PipelineConfig) -> ModelSource:
    from finetune.models import DEFAULT_MODEL, resolve_model_path
    from quantize.openvino import is_openvino_folder

    name = config.model_name_or_path or DEFAULT_MODEL
    peft_path = Path(config.loading_config.peft_path) if config.loading_config.peft_path else None
    path = Path(name).expanduser()
    if path.is_dir() and is_openvino_folder(path):
        return ModelSource(path, model_id_for(name), True, peft_path)
    weights = run_weights(path) if path.is_dir() else None  # a finetune_model output folder
    if weights is not None and weights.merged is not None:
        path = weights.merged
    elif weights is not None:
        base = weights.base_model()
        if not base:
            raise FileNotFoundError(
                f"{weights.adapter} names no base_model_name_or_path: pass model_name_or_path=<base>")
        path, peft_path = Path(base), peft_path or weights.adapter
    local = Path(resolve_model_path(str(path) if path.exists() else name, config.loading_config.allow_download))
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
    hw = detect_hardware()
    if device == "cpu" and not hw.cpu_bf16:
        warnings.warn(f"MixedPrecisionConfig asks for bf16, but this runs in fp32: {hw.cpu_precision[1]}.",
                      stacklevel=3)
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
    import torch

    from finetune.frozen_weights import compute_frozen_in
    from finetune.models import load_model, load_tokenizer
    from neural_chat_app.torch_backend import TorchBackend

    device = resolve_device(config.device)
    kwargs = {"trust_remote_code": config.loading_config.trust_remote_code}
    if type(config.optimization_config).__name__ == "BitsAndBytesConfig":
        kwargs["quantization_config"] = config.optimization_config
    dtype = torch_dtype(config, device)
    plan = None
    if device == "cpu" and "quantization_config" not in kwargs:  # stops here, before loading, when it cannot fit
        plan = _plan(source, config, dtype, max_concurrency)
        dtype = torch.bfloat16 if plan.storage == "bf16" else torch.float32
    model = load_model(str(source.path), dtype=dtype, **kwargs)
    if source.peft_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(source.peft_path)).merge_and_unload()
    if plan is not None and plan.narrow:
        compute_frozen_in(model.requires_grad_(False), torch.float32, narrow_rows=True)
    elif "quantization_config" not in kwargs:
        model = model.to(device)
        _prepack(model, plan is not None and plan.prompt_copy)
    tokenizer = load_tokenizer(config.tokenizer_name_or_path or str(source.path),
                               trust_remote_code=config.loading_config.trust_remote_code)
    plain = source.peft_path is None and "quantization_config" not in kwargs  # LoRA adapters of it can attach
    return TorchBackend(model, tokenizer, source.model_id, max_concurrency=max_concurrency,
                        base_path=source.path if plain else None)


def _plan(source: ModelSource, config: PipelineConfig, dtype, max_concurrency: int):
    """How the weights are held (neural_chat_app.memory): in the compute precision when they fit, else bf16
    weights computed in fp32 where MixedPrecisionConfig asked for bf16 on a CPU without bf16 matmuls."""
    import torch

    from finetune.hardware import matmul_precision
    from neural_chat_app.memory import plan_serving

    opt = config.optimization_config
    asks_bf16 = isinstance(opt, MixedPrecisionConfig) and opt.dtype == "bfloat16"
    compute = "bf16" if dtype == torch.bfloat16 else "fp32"
    # prompts are bound by the matmuls, as training is: fp32 where it measured faster (neural_chat_app.prepacked)
    prompt_copy = compute == "bf16" and matmul_precision()[0] == "fp32"
    plan = plan_serving(source.path, compute, max_concurrency, narrow_allowed=asks_bf16,
                        trust_remote_code=config.loading_config.trust_remote_code, prompt_copy=prompt_copy)
    (logger.warning if plan.narrow else logger.info)("Memory for %s: %s", source.model_id, plan.reason)
    return plan


def _prepack(model, plain_for_prompts: bool = False) -> None:
    """Reorder the linear weights for oneDNN where it can (neural_chat_app/prepacked.py), saying why not where not;
    `plain_for_prompts`: keep the plain weights too, for prompts computed in fp32."""
    from finetune.memory import available_gib
    from neural_chat_app.prepacked import prepack_linears, tied_head_copy, why_not_prepacked

    why = why_not_prepacked(model)
    if why is not None:
        logger.info("Linear weights kept in PyTorch's layout: %s", why)
        return
    copy, head = tied_head_copy(model, available_gib()[0])
    logger.info("%d linear layers reordered for oneDNN (faster decoding)%s; %s",
                prepack_linears(model, copy_tied_head=copy, plain_for_prompts=plain_for_prompts),
                ", their plain weights kept for prompts in fp32" if plain_for_prompts else "", head)


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
        loaded = load_weight_only(config, max_concurrency)
    else:
        source = resolve_source(config)
        backend = config.backend
        if backend == "auto":
            backend = "openvino" if source.is_openvino else "torch"
        if backend == "torch":
            if source.is_openvino:
                raise ValueError(f"{source.path} is an OpenVINO IR folder: use backend='openvino' or 'auto'")
            loaded = load_torch(source, config, max_concurrency or 1)
        else:
            loaded = load_openvino(source, config, max_concurrency or 8)
    logger.info("%s on the %s backend: %s", loaded.model_id, loaded.kind, compute_line(loaded))
    return loaded


def compute_line(backend) -> str:
    """What a loaded backend computes in and why: precision and its reason, threads, allocator."""
    from finetune.hardware import compute_summary

    if backend.kind == "openvino":  # the CPU plugin infers in bf16 where the CPU has bf16 matmuls, else in f32
        return "OpenVINO CPU plugin, " + compute_summary("cpu")
    model = getattr(backend, "model", None)
    if model is None:
        return compute_summary("cpu")
    import torch

    from neural_chat_app.prepacked import PrepackedLinear

    names = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
    line = compute_summary(model.device.type, names.get(backend.dtype, backend.dtype))
    packed = sum(isinstance(m, PrepackedLinear) for m in model.modules())
    for_prompts = sum(isinstance(m, PrepackedLinear) and m.prompt_weight is not None for m in model.modules())
    narrow = sum(hasattr(m, "_compute_dtype") for m in model.modules() if isinstance(m, torch.nn.Linear))
    if narrow:  # finetune.frozen_weights: bf16 weights where fp32 ones do not fit
        line += (f"; {narrow} linear layers keep bf16 weights, widened to fp32 for prompts, decode steps on the "
                 f"bf16 weights with fp32 sums")
    if for_prompts:
        from finetune.hardware import matmul_precision
        from neural_chat_app.prepacked import PROMPT_ROWS

        line += (f"; prompts (over {PROMPT_ROWS} tokens at once) in fp32 over a plain copy of the weights, because "
                 f"{matmul_precision()[1]}")
    return line + (f"; {packed} linear layers reordered for oneDNN" if packed else "")


def _quantized_artifact(source: ModelSource, opt: WeightOnlyQuantConfig, backend: str) -> Path:
    """The quantize artifact to serve: `source` itself when it is one, else a data-free RTN artifact made once
    in the cache with the config's weight_dtype / group_size / scheme (OpenVINO INT8 is always per channel)."""
    from finetune.models import cache_home
    from quantize import QuantizeConfig, quantize_model
    from quantize.artifacts import QUANTIZATION_METADATA_FILE, artifact_name

    bits = 8 if opt.weight_dtype == "int8" else 4
    meta_file = source.path / QUANTIZATION_METADATA_FILE
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("bits") != bits:
            raise ValueError(
                f"{source.path} holds {meta.get('bits')}-bit weights ({meta.get('tag')}) but "
                f"WeightOnlyQuantConfig.weight_dtype={opt.weight_dtype!r}: make them agree"
            )
        return source.path
    if source.is_openvino:
        return source.path  # an IR folder from export_openvino: served as it is
    if opt.algorithm != "RTN":
        raise ValueError(
            f"WeightOnlyQuantConfig.algorithm={opt.algorithm!r} calibrates on data: run quantize_model(model=..., "
            f"scheme={opt.algorithm.lower()!r}, calibration_file=...) and serve the artifact folder it writes"
        )
    if source.peft_path is not None:
        raise NotImplementedError("WeightOnlyQuantConfig quantizes merged models: serve the fine-tune output folder")
    backend_name = "openvino" if backend == "openvino" else "inc"
    group = -1 if (backend_name == "openvino" and bits == 8) else opt.group_size
    try:
        cfg = QuantizeConfig(model=str(source.path), output_dir=str(cache_home() / "quantized"), backend=backend_name,
                             scheme="rtn", bits=bits, group_size=group, sym=opt.scheme == "sym", evaluate=False)
    except ValueError as err:  # say it in the terms the user wrote
        raise ValueError(f"WeightOnlyQuantConfig(weight_dtype={opt.weight_dtype!r}, scheme={opt.scheme!r}) served "
                         f"with backend {backend!r} quantizes through {backend_name}: {err}") from err
    folder = cache_home() / "quantized" / artifact_name(source.path, cfg.tag, cfg.suffix)
    if not (folder / QUANTIZATION_METADATA_FILE).is_file():
        logger.warning("Quantizing %s (%s) into %s once", source.path, cfg.tag, folder)
        folder = quantize_model(cfg)
    return folder


def load_weight_only(config: PipelineConfig, max_concurrency: int | None = None):
    """Serve INT8/INT4 weights: OpenVINO IR artifacts through openvino-genai, Neural Compressor artifacts through
    the torch backend; a plain model is quantized once (data-free RTN) into the cache, OpenVINO for backend
    auto/openvino, Neural Compressor for backend torch."""
    from quantize.artifacts import QUANTIZATION_METADATA_FILE

    source = resolve_source(config)
    meta_file = source.path / QUANTIZATION_METADATA_FILE
    recorded = json.loads(meta_file.read_text()).get("backend") if meta_file.is_file() else None
    backend = config.backend
    if backend == "auto":
        backend = "torch" if recorded == "inc" else "openvino"
    folder = _quantized_artifact(source, config.optimization_config, backend)
    recorded = json.loads((folder / QUANTIZATION_METADATA_FILE).read_text()).get("backend") if (
        folder / QUANTIZATION_METADATA_FILE).is_file() else "openvino"
    if recorded == "openvino":
        if backend != "openvino":
            raise ValueError(f"{folder} is an OpenVINO artifact: use backend='openvino' or 'auto'")
        return load_openvino(ModelSource(folder, source.model_id, True), config, max_concurrency or 8)
    if recorded != "inc" or backend != "torch":
        raise ValueError(f"{folder} is a {recorded} artifact: WeightOnlyQuantConfig serves OpenVINO and Neural "
                         "Compressor (inc) artifacts; use backend='torch' for inc")
    from neural_chat_app.torch_backend import TorchBackend
    from quantize import load_quantized

    model, tokenizer, _ = load_quantized(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return TorchBackend(model, tokenizer, source.model_id, max_concurrency=max_concurrency or 1)
