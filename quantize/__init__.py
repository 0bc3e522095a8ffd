"""Quantize and export models for CPU serving: Neural Compressor (RTN/GPTQ/AWQ/AutoRound), OpenVINO (NNCF),
GGUF (llama.cpp / Ollama), and ONNX for transformers.js in the browser (web). Every artifact records its scheme
and its measured quality (quantization.json).

Heavy libraries (neural-compressor, optimum-intel, openvino, gguf, onnx, onnxruntime) load only inside the
functions that use them.
"""

import finetune  # noqa: F401  first, so a mismatched torchvision is hidden (finetune/torchvision_guard.py)
from quantize.api import quantize_model
from quantize.artifacts import read_metadata
from quantize.compare import compare_artifacts
from quantize.config import QuantizeConfig
from quantize.loading import load_quantized
from quantize.openvino import export_openvino, is_openvino_folder

__all__ = [
    "QuantizeConfig",
    "compare_artifacts",
    "export_openvino",
    "is_openvino_folder",
    "load_quantized",
    "quantize_model",
    "read_metadata",
]
