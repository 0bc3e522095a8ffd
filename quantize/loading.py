"""Load an artifact folder for serving or evaluation: (model, tokenizer, metadata)."""

from __future__ import annotations

from pathlib import Path

from quantize.artifacts import read_metadata


def load_quantized(path: str | Path):
    """The torch model, tokenizer and quantization.json of an INC or GGUF artifact.

    OpenVINO artifacts are IR folders: serve them with openvino-genai (neural_chat_app's OpenVINO backend) or
    optimum-intel's OVModelForCausalLM, not as torch modules.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    meta = read_metadata(path)
    backend = meta.get("backend")
    if backend == "inc":
        from quantize.inc import load_inc

        return load_inc(path), AutoTokenizer.from_pretrained(path), meta
    if backend == "gguf":
        from quantize.gguf_export import load_gguf

        model, tokenizer = load_gguf(path)
        return model, tokenizer, meta
    if backend == "web":
        raise ValueError(f"{path} is a web (ONNX) artifact: open its page/ in a browser, or run it in Python with "
                         "quantize.web.load_web(path)")
    raise ValueError(
        f"{path} is a {backend} artifact: load it with the OpenVINO runtime (PipelineConfig(backend='openvino'))"
    )
