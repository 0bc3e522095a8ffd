"""GGUF for llama.cpp and Ollama, written by llama.cpp's own converter, for every family it converts.

The converter is llama.cpp's convert_hf_to_gguf.py with its `conversion` package and its own gguf-py, as the
source distribution of llama-cpp-python (a registry package) ships them: fetched once into the cache, run as is.
PyPI's gguf 0.19 is older than that converter (its Qwen and Gemma modules name architectures 0.19 lacks), so the
converter runs in its own process on its own gguf-py.
- f16, bf16, q8_0: written by the converter itself;
- q4_0, q4_1: the converter's F16 file re-quantized block by block with gguf's reference quantizers;
- q4_k_m, q5_k_m, q6_k: the F16 file through llama.cpp's quantizer (`llama_model_quantize`, what the
  `llama-quantize` tool runs), from an installed llama-cpp-python.
The folder also gets an Ollama Modelfile in the model's own chat format with its stop tokens, and the exact Hugging
Face tokenizer for serving the folder through transformers.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from finetune.extras import install_hint
from quantize.config import QuantizeConfig
from quantize.memory import child_peak

logger = logging.getLogger(__name__)

LLAMA_CPP_PYTHON = "0.3.36"  # the llama.cpp whose converter we run, and the one benchmarks.llamacpp builds
LLAMA_CPP_HINT = ("the k-quants (q4_k_m, q5_k_m, q6_k) run llama.cpp's quantizer from llama-cpp-python: build it for "
                  "this CPU with `python -m benchmarks.llamacpp build` (about 5 minutes), or use q8_0 / q4_0 / q4_1")
CONVERTER_TYPES = ("f16", "bf16", "q8_0")
REQUANTIZED = {"q4_0": ("Q4_0", "MOSTLY_Q4_0"), "q4_1": ("Q4_1", "MOSTLY_Q4_1")}
K_QUANTS = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
            "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def import_gguf():
    """The gguf package, or an ImportError that says what to install."""
    try:
        import gguf
    except ImportError as err:
        raise ImportError(f"backend='gguf' needs the gguf package ({err}). Install it with: "
                          f"{install_hint('gguf', 'sentencepiece')}") from err
    return gguf


def converter_dir() -> Path:
    """llama.cpp's converter tree: $LLAMA_CPP_DIR (a llama.cpp checkout) or, fetched once from the registry, the
    one inside llama-cpp-python's source distribution, kept in the cache."""
    if os.environ.get("LLAMA_CPP_DIR"):
        root = Path(os.environ["LLAMA_CPP_DIR"]).expanduser()
        if not (root / "convert_hf_to_gguf.py").is_file():
            raise FileNotFoundError(f"LLAMA_CPP_DIR={root} holds no convert_hf_to_gguf.py: point it at a llama.cpp "
                                    f"checkout")
        return root
    from finetune.models import cache_home

    root = cache_home() / "llama.cpp" / LLAMA_CPP_PYTHON
    if (root / "convert_hf_to_gguf.py").is_file():
        return root
    from filelock import FileLock  # ships with huggingface_hub

    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):  # test workers and DDP ranks may arrive together
        if not (root / "convert_hf_to_gguf.py").is_file():
            _fetch_converter(root)
    return root


def _fetch_converter(root: Path) -> None:
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", tmp,
                   f"llama-cpp-python=={LLAMA_CPP_PYTHON}"]
        logger.info("Fetching llama.cpp's GGUF converter once: %s", " ".join(command))
        done = subprocess.run(command, capture_output=True, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode or not archives:
            raise FileNotFoundError(
                f"GGUF export runs llama.cpp's converter, fetched from the source distribution of llama-cpp-python="
                f"{LLAMA_CPP_PYTHON}, and the download failed ({done.stderr.strip()[-300:]}). With a network, run the "
                f"export again; without one, set LLAMA_CPP_DIR to a llama.cpp checkout.")
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        staging = Path(tmp) / "tree"
        with tarfile.open(archives[0]) as archive:
            members = [m for m in archive.getmembers() if m.isfile() and m.name.startswith(prefix)
                       and m.name[len(prefix):].startswith(_CONVERTER_FILES)]
            for member in members:
                member.name = member.name[len(prefix):]
            archive.extractall(staging, members=members, filter="data")
        staging.rename(root)


def gguf_file_name(cfg: QuantizeConfig) -> str:
    return f"model-{cfg.scheme}.gguf"


# The converter imports transformers, which imports a torchvision built for CUDA where pip installed one beside the
# CPU torch and then fails ("Could not import module 'LlamaConfig'"): it runs behind our guard.
# Its own peak memory comes back on its last line of stderr, for the export phase's peak (quantize.memory).
_PEAK_LINE = "converter peak resident MB: "
_RUN_HIDING_TORCHVISION = ("import os, runpy, sys; import finetune  # hides a mismatched torchvision\n"
                           "from finetune.memory import peak_rss_mb\n"
                           "sys.argv = sys.argv[1:]; sys.path.insert(0, os.path.dirname(sys.argv[0]))\n"
                           "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
                           f"finally:\n    print('\\n{_PEAK_LINE}%.0f' % peak_rss_mb(), file=sys.stderr)")


# Families published with a multi-token-prediction head (mtp.*) that transformers does not load, so a fine-tuned or
# text-only folder has none: told nothing, llama.cpp's converter stops on its absence (an AssertionError).
_MTP_FAMILIES = {"qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_next"}


def _lacks_its_mtp_head(source: Path) -> bool:
    from safetensors import safe_open

    from finetune.models import safetensors_files

    if json.loads((source / "config.json").read_text()).get("model_type") not in _MTP_FAMILIES:
        return False
    for file in safetensors_files(source):
        with safe_open(str(file), framework="pt") as weights:
            if any(key.startswith("mtp.") for key in weights.keys()):  # noqa: SIM118 (safe_open is not a mapping)
                return False
    return True


def convert(source: Path, out_file: Path, outtype: str = "f16") -> Path:
    """`source` (a Hugging Face folder) as a GGUF file of `outtype` (f16, bf16 or q8_0), by llama.cpp's converter."""
    command = [sys.executable, "-c", _RUN_HIDING_TORCHVISION, str(converter_dir() / "convert_hf_to_gguf.py"),
               str(source), "--outfile", str(out_file), "--outtype", outtype]
    if _lacks_its_mtp_head(Path(source)):
        command.append("--no-mtp")
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # the converter's own gguf-py, not PyPI's
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    if lines and lines[-1].startswith(_PEAK_LINE):
        child_peak(float(lines.pop()[len(_PEAK_LINE):]) / 1024)
    if done.returncode or not out_file.is_file():
        reason = lines[-1] if lines else "no output"
        hint = (" It recognizes the tokenizers of the published model families; a tokenizer of your own has no GGUF "
                "pre-tokenizer." if "pre-tokenizer" in reason else "")
        raise RuntimeError(f"llama.cpp's converter could not convert {source}: {reason}.{hint}")
    return out_file


def requantize(f16_file: Path, out_file: Path, scheme: str) -> Path:
    """Rewrite an F16 GGUF with its matrices in Q4_0/Q4_1 blocks (gguf's reference quantizers, which mirror
    llama.cpp's); vectors stay as they are, metadata is copied with the new file type."""
    gguf = import_gguf()
    import numpy as np

    qtype = getattr(gguf.GGMLQuantizationType, REQUANTIZED[scheme][0])
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    reader = gguf.GGUFReader(f16_file)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(out_file, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value = int(getattr(gguf.LlamaFileType, REQUANTIZED[scheme][1])) if field.name == \
            gguf.Keys.General.FILE_TYPE else field.contents()
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        data = tensor.data
        if tensor.tensor_type == gguf.GGMLQuantizationType.F16 and data.ndim == 2 and data.shape[-1] % block == 0:
            writer.add_tensor(tensor.name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)
        else:  # norms, biases, rows that do not fill a block: as the converter wrote them
            writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file


def k_quantize(f16_file: Path, out_file: Path, scheme: str, threads: int | None = None) -> Path:
    """llama.cpp's own k-quant quantizer on an F16 GGUF (llama-cpp-python's `llama_model_quantize`)."""
    try:
        import llama_cpp
    except ImportError as err:
        raise ImportError(f"GGUF scheme {scheme!r}: {LLAMA_CPP_HINT}") from err
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, K_QUANTS[scheme])
    params.nthread = threads or 0
    status = llama_cpp.llama_model_quantize(str(f16_file).encode(), str(out_file).encode(), params)
    if status != 0:
        raise RuntimeError(f"llama.cpp's quantizer failed on {f16_file} ({scheme}, status {status})")
    return out_file


def write_gguf(source: Path, cfg: QuantizeConfig, out: Path) -> Path:
    """Write `out/model-<scheme>.gguf`, `out/Modelfile` and the tokenizer for the model at `source`."""
    from transformers import AutoTokenizer, GenerationConfig

    path = out / gguf_file_name(cfg)
    if cfg.scheme in CONVERTER_TYPES:
        convert(source, path, cfg.scheme)
    else:
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            f16 = convert(source, Path(tmp) / "model-f16.gguf", "f16")
            if cfg.scheme in REQUANTIZED:
                requantize(f16, path, cfg.scheme)
            else:
                k_quantize(f16, path, cfg.scheme)
    tokenizer = AutoTokenizer.from_pretrained(source)
    try:
        generation = GenerationConfig.from_pretrained(source)
    except OSError:
        generation = None
    from quantize.ollama import modelfile

    (out / "Modelfile").write_text(modelfile(path.name, tokenizer, generation))
    tokenizer.save_pretrained(out)  # the exact HF tokenizer, for serving the folder through transformers
    return path


def load_gguf(folder: str | Path, dtype=None):
    """The model (dequantized to `dtype`, a torch dtype, fp32 by default, a tensor at a time: finetune.gguf_weights)
    and tokenizer of a GGUF artifact folder."""
    import torch
    from transformers import AutoTokenizer

    from finetune.gguf_weights import load_model

    folder = Path(folder)
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    model = load_model(files[0], dtype or torch.float32)
    if (folder / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=files[0].name)
    return model, tokenizer
