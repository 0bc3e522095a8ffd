"""Export a Hugging Face model folder to an OpenVINO IR folder that openvino-genai can serve.

optimum-intel writes the IR (and NNCF compresses its weights for int8/int4); openvino-tokenizers converts the
tokenizer, because openvino-genai's pipelines read openvino_tokenizer.xml / openvino_detokenizer.xml, not
tokenizer.json. The HF tokenizer files are saved too, so the folder also works for chat templates and counting.
Every export has its query/key/value projections fused into one MatMul (quantize/projection_fusion.py): faster
decoding at batch 1, same results.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal, get_args

from finetune.extras import install_hint
from quantize.artifacts import staging

logger = logging.getLogger(__name__)

WeightFormat = Literal["fp32", "bf16", "int8", "int4"]
OPENVINO_EXPORT_FILE = "openvino_export.json"


def is_openvino_folder(path: str | Path) -> bool:
    """True when `path` holds an OpenVINO IR that openvino-genai can load (model plus converted tokenizer)."""
    path = Path(path)
    return (path / "openvino_model.xml").is_file() and (path / "openvino_tokenizer.xml").is_file()


def import_exporters():
    """(OVModelForCausalLM, OVWeightQuantizationConfig, convert_tokenizer), or an ImportError that says what to
    install."""
    try:
        import openvino_tokenizers  # noqa: F401  (registers the tokenizer ops with OpenVINO)
        from openvino_tokenizers import convert_tokenizer
        from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig
    except ImportError as err:  # a torchvision built for CUDA is hidden first (finetune/torchvision_guard.py)
        raise ImportError(
            f"Exporting to OpenVINO needs optimum-intel and openvino-tokenizers ({err}). Install them with: "
            f"{install_hint('optimum.intel', 'openvino_genai', 'openvino_tokenizers')}"
        ) from err
    return OVModelForCausalLM, OVWeightQuantizationConfig, convert_tokenizer


def _export_kwargs(weight_format: str, quant_config_cls) -> dict:
    if weight_format in ("fp32", "bf16"):
        # Without a config optimum-intel compresses models over 1B parameters to int8; say full precision and
        # mean it. For "bf16" the IR keeps fp32 weights: OpenVINO's CPU plugin already computes in bf16 on
        # AMX / AVX512-BF16 by default (measured on a 2-core AMX Xeon), so a bf16 IR would only save disk.
        return {"load_in_8bit": False}
    if weight_format == "int8":
        return {"quantization_config": quant_config_cls(bits=8)}
    # Data-free int4, group 64, asymmetric: measured ~20-25% perplexity cost on the 135M model.
    return {"quantization_config": quant_config_cls(bits=4, group_size=64, sym=False)}


def _plain_byte_level_decoder(tokenizer):
    """Replace a GGUF-derived decoder chain (ByteFallback, Fuse, Replace, ByteLevel) with plain ByteLevel.

    transformers' GGUF loader writes that chain for byte-level BPE vocabularies; openvino-tokenizers cannot
    convert it ("index '2' out of range" in the Fuse step). In a byte-level vocabulary the extra steps never
    fire, so plain ByteLevel decodes the same text.
    """
    from tokenizers import decoders

    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = backend.decoder if backend is not None else None
    if decoder is not None and "ByteLevel" in repr(decoder) and "Sequence" in type(decoder).__name__:
        backend.decoder = decoders.ByteLevel()
    return tokenizer


# optimum-intel 2.2 refuses to export the Gemma family with transformers newer than 5.0 (the cap sits on
# GemmaOpenVINOConfig, which Gemma 2 and Gemma 3's configs inherit). With our transformers 5.5.4 the export runs,
# and the IR's greedy tokens equal torch's on Gemma 2 and Gemma 3 models (tests/test_families_end_to_end.py; every
# export records its agreement in quantization.json), so the cap is lifted for these classes only.
_VERIFIED_PAST_CAP = ("GemmaOpenVINOConfig",)


# Architectures optimum-intel 2.2 has no export configuration for, exported with the one of the family they extend.
# Ministral 3 (ministral3) is Mistral's decoder with YaRN and queries scaled by position: the export traces its own
# forward, and the fp32 IR's logits equal torch's within 3e-7 past the YaRN base, where the position scaling alone
# moves them by 6e-4 (tests/test_new_families.py).
_EXPORTED_AS = {"ministral3": "mistral"}


def _prepare_verified_exports() -> None:
    from optimum.exporters.openvino import model_configs
    from optimum.exporters.tasks import TasksManager

    supported = TasksManager._LIBRARY_TO_SUPPORTED_MODEL_TYPES["transformers"]
    for model_type, family in _EXPORTED_AS.items():
        if "openvino" not in supported.get(model_type, {}):
            supported.setdefault(model_type, {})["openvino"] = dict(supported[family]["openvino"])
    for name in _VERIFIED_PAST_CAP:
        config_class = getattr(model_configs, name, None)
        if config_class is not None and config_class.__dict__.get("MAX_TRANSFORMERS_VERSION"):
            logger.info("optimum-intel caps %s at transformers %s; exporting past the cap, verified by greedy-token "
                        "agreement", name, config_class.MAX_TRANSFORMERS_VERSION)
            config_class.MAX_TRANSFORMERS_VERSION = None


def _export_into(model_dir: Path, target: Path, export_kwargs: dict) -> int:
    """Export (and compress) the model at `model_dir` into the existing folder `target`, tokenizers converted;
    return the number of fused projection groups (one per attention layer)."""
    OVModelForCausalLM, _, convert_tokenizer = import_exporters()
    import openvino as ov
    from transformers import AutoTokenizer

    from quantize.projection_fusion import fuse_projections_in_folder

    _prepare_verified_exports()
    try:
        model = OVModelForCausalLM.from_pretrained(str(model_dir), export=True, compile=False, **export_kwargs)
    except ValueError as err:
        if "unsupported architecture" not in str(err) and "does not allow for the export" not in str(err):
            raise
        raise _unsupported_architecture(model_dir, err) from err
    model.save_pretrained(target)
    del model
    fused = fuse_projections_in_folder(target)
    tokenizer = _plain_byte_level_decoder(AutoTokenizer.from_pretrained(str(model_dir)))
    tokenizer.save_pretrained(target)
    ov_tokenizer, ov_detokenizer = convert_tokenizer(tokenizer, with_detokenizer=True)
    ov.save_model(ov_tokenizer, target / "openvino_tokenizer.xml")
    ov.save_model(ov_detokenizer, target / "openvino_detokenizer.xml")
    return fused


def _unsupported_architecture(model_dir: Path, err: ValueError) -> NotImplementedError:
    """optimum-intel's refusal of an architecture, said in our terms: which model, why, and the exports that take it.
    Measured: Qwen 3.5's export configuration (qwen3_5_text) in optimum-intel 2.2 is capped at transformers 5.2
    and imports a cache class transformers 5.5 no longer has."""
    import json
    from importlib.metadata import version

    model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")
    reason = str(err).split(". ")[0]
    return NotImplementedError(
        f"OpenVINO export of this {model_type} model: optimum-intel {version('optimum-intel')} cannot export this "
        f"architecture with transformers {version('transformers')} ({reason}). The model serves as it is "
        "(backend='torch'); for a quantized copy use backend='inc' (INT8/INT4 weights) or backend='gguf' "
        "(llama.cpp, Ollama).")


def weight_compression_config(cfg, source: Path, texts: list[str]):
    """optimum-intel's OVWeightQuantizationConfig (NNCF) for a QuantizeConfig with backend='openvino'."""
    _, OVWeightQuantizationConfig, _ = import_exporters()
    if cfg.bits == 8:
        return OVWeightQuantizationConfig(bits=8, sym=cfg.sym)
    kwargs = {"bits": 4, "sym": cfg.sym, "group_size": cfg.group_size, "ratio": cfg.ratio, "all_layers": cfg.all_layers}
    if texts:
        kwargs.update(dataset=texts, tokenizer=str(source), num_samples=len(texts))
    if cfg.scheme in ("awq", "awq_se"):
        kwargs["quant_method"] = "awq"
    if cfg.scheme in ("scale_estimation", "awq_se", "gptq_se"):
        kwargs["scale_estimation"] = True
    if cfg.scheme in ("gptq", "gptq_se"):
        kwargs["gptq"] = True
    return OVWeightQuantizationConfig(**kwargs)


def quantize_openvino(source: Path, cfg, out: Path, texts: list[str]) -> None:
    """Write an INT8/INT4 OpenVINO IR folder for `source` into the existing folder `out` (NNCF compression)."""
    _export_into(source, out, {"quantization_config": weight_compression_config(cfg, source, texts)})


def export_openvino(model_dir: str | Path, output_dir: str | Path, weight_format: WeightFormat = "fp32") -> Path:
    """Write an OpenVINO IR folder for `model_dir` (a Hugging Face folder) at `output_dir`; return its path.

    The folder is written under a temporary name and renamed at the end, so a killed export never leaves a
    half-written folder that looks complete.
    """
    if weight_format not in get_args(WeightFormat):
        raise ValueError(f"weight_format must be one of {get_args(WeightFormat)}, got {weight_format!r}")
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    from finetune.language_model import language_model_folder

    model_dir = language_model_folder(model_dir)  # a multimodal model's language model: optimum exports that for text
    _, OVWeightQuantizationConfig, _ = import_exporters()
    start = time.perf_counter()
    with staging(output_dir) as tmp:
        fused = _export_into(model_dir, tmp, _export_kwargs(weight_format, OVWeightQuantizationConfig))
        metadata = {
            "source_model": str(model_dir.resolve()),
            "weight_format": weight_format,
            "fused_projection_groups": fused,
            "export_seconds": round(time.perf_counter() - start, 1),
            "created_at": time.time(),
        }
        (tmp / OPENVINO_EXPORT_FILE).write_text(json.dumps(metadata, indent=2))
    logger.info("Exported %s to %s (%s) in %.0f s", model_dir, output_dir, weight_format, metadata["export_seconds"])
    return output_dir
