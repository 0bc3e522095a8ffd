"""POST /v1/embeddings (OpenAI's shape), and the embedding model it shares with Ollama's /api/embed.

The model is the retrieval plugin's all-MiniLM-L6-v2 (plugins/embedding.py: mean pooled, unit vectors). It loads on
the first embeddings request, once per server (the retrieval plugin's copy when that plugin runs it), and runs in
a worker thread. An input longer than the model reads is refused here, never cut silently; Ollama's `truncate`
(its default) cuts it.
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass
from typing import Literal

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from neural_chat_app.server.errors import APIError
from neural_chat_app.server.state import check_api_key, get_state, read_body

router = APIRouter(dependencies=[Depends(check_api_key)])

EMBEDDING_MODEL_ID = "all-minilm-l6-v2"
# Also accepted: the default aliases, Ollama's name for this model, and its Hugging Face name (any case).
EMBEDDING_ALIASES = ("", "default", "all-minilm", "all-minilm:l6-v2", "all-minilm-l6-v2",
                     "sentence-transformers/all-minilm-l6-v2")
EMBEDDING_DIMENSIONS = 384  # all-MiniLM-L6-v2's; listed before the model loads, checked when it does
MAX_INPUTS = 2048  # inputs per request, as OpenAI's API


def is_embedding_model(name: str | None) -> bool:
    name = (name or "").lower()
    return name.removesuffix(":latest") in EMBEDDING_ALIASES


def check_embedding_model(name: str | None) -> None:
    if not is_embedding_model(name):
        raise APIError(404, f"The model {name!r} is not an embedding model on this server; GET /v1/models lists the "
                            f"models (the embedding model is {EMBEDDING_MODEL_ID!r})", "model_not_found", "model")


@dataclass
class Embeddings:
    vectors: np.ndarray  # float32 (n, dim), unit length
    prompt_tokens: int
    load_s: float  # loading the model, when this request did
    total_s: float


class EmbeddingModel:
    """The server's embedding model: loaded on first use; `embed` runs in a worker thread."""

    def __init__(self, shared=None, loader=None):
        self._shared = shared  # the retrieval plugin's Embedder when it runs the same model: not loaded twice
        self._loader = loader
        self._embedder = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one batch at a time: two would only share the same cores

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    @property
    def embedder(self):
        """The loaded plugins.embedding.Embedder, or None before the first request."""
        return self._embedder

    def _get(self):
        """(the Embedder, seconds spent loading it now)."""
        with self._load_lock:
            if self._embedder is not None:
                return self._embedder, 0.0
            start = time.perf_counter()
            try:
                if self._shared is not None:
                    embedder = self._shared
                elif self._loader is not None:
                    embedder = self._loader()
                else:
                    from neural_chat_app.plugins.embedding import Embedder

                    embedder = Embedder()
            except (OSError, ImportError, ValueError) as err:
                raise APIError(503, f"The embedding model could not be loaded: {err}", "model_load_failed") from err
            if embedder.dim != EMBEDDING_DIMENSIONS:
                raise APIError(500, f"The embedding model has {embedder.dim} dimensions, not {EMBEDDING_DIMENSIONS}",
                               "model_load_failed")
            self._embedder = embedder
            return embedder, time.perf_counter() - start

    def embed(self, inputs: list[str] | list[list[int]], truncate: bool, where: str = "input") -> Embeddings:
        """Embed texts, or token id lists of the embedding model's tokenizer. Without `truncate`, an input longer
        than the model reads is refused (400 naming it)."""
        start = time.perf_counter()
        embedder, load_s = self._get()
        tokenizer = embedder.tokenizer
        texts = [item if isinstance(item, str) else self._decode(tokenizer, item, f"{where}.{i}")
                 for i, item in enumerate(inputs)]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]] if texts else []
        limit = embedder.max_length
        if not truncate:
            for i, n in enumerate(lengths):
                if n > limit:
                    name = where if len(inputs) == 1 and where == "prompt" else f"{where}.{i}"
                    raise APIError(400, f"{name} has {n} tokens; {EMBEDDING_MODEL_ID} reads at most {limit}: "
                                        f"split it", "context_length_exceeded", name)
        with self._run_lock:
            vectors = embedder.embed(texts)
        return Embeddings(vectors, sum(min(n, limit) for n in lengths), load_s, time.perf_counter() - start)

    @staticmethod
    def _decode(tokenizer, ids: list[int], where: str) -> str:
        size = len(tokenizer)
        bad = next((i for i in ids if not 0 <= i < size), None)
        if bad is not None:
            raise APIError(400, f"{where}: token id {bad} is not in the embedding model's vocabulary (0..{size - 1})",
                           "invalid_value", where)
        return tokenizer.decode(ids, skip_special_tokens=True)


async def embed_admitted(request: Request, work):
    """Run `work` in a thread in the generation queue's line: embeddings share the cores with generation, so they
    take a slot like a reply does (429 when the queue is full)."""
    from neural_chat_app.server.admission import QueueFull

    admission = get_state(request).admission
    try:
        admission.reserve()
    except QueueFull as err:
        raise APIError(429, f"{err}; retry later", "rate_limit_exceeded") from err
    await admission.acquire()
    try:
        return await anyio.to_thread.run_sync(work)
    finally:
        admission.release()


def embedding_model(request: Request) -> EmbeddingModel:
    """This server's EmbeddingModel, made on first use."""
    app_state = request.app.state
    model = getattr(app_state, "embedding_model", None)
    if model is None:
        model = app_state.embedding_model = EmbeddingModel(_retrieval_embedder(get_state(request).plugins))
    return model


def _retrieval_embedder(plugins):
    retriever = getattr(plugins, "retriever", None)
    embedder = getattr(retriever, "embedder", None)
    # plugins.embedding.Embedder names the packaged model so; a folder of the operator's is another model.
    return embedder if getattr(embedder, "name", None) == "all-MiniLM-L6-v2" else None


def embedding_model_listing(request: Request) -> dict:
    """The embedding model as /v1/models lists it. The top-level `loaded` marks the chat model generation goes to
    (the web page selects it), so here it is False and metadata.loaded says whether the model is in memory."""
    from neural_chat_app.plugins.embedding import PACKAGE

    model = getattr(request.app.state, "embedding_model", None)
    return {
        "id": EMBEDDING_MODEL_ID,
        "object": "model",
        "created": 0,
        "owned_by": "local",
        "kind": "embedding",
        "loaded": False,  # not the chat model generation goes to; in memory or not: metadata.loaded
        "backend": "torch",
        "metadata": {"dimensions": EMBEDDING_DIMENSIONS, "package": PACKAGE, "loaded": bool(model and model.loaded),
                     "endpoints": ["/v1/embeddings", "/api/embed"]},
    }


class EmbeddingRequest(BaseModel):
    # As the other OpenAI routes: fields OpenAI may add later are accepted and ignored.
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


def _inputs(value) -> list[str] | list[list[int]]:
    """OpenAI's four input forms as a list of texts or of token id lists; 400 for an empty one."""
    if isinstance(value, str):
        items = [value]
    elif value and isinstance(value[0], int):
        items = [value]  # one text as token ids
    else:
        items = list(value)
    if not items:
        raise APIError(400, "input is an empty list: send at least one text", "invalid_value", "input")
    if len(items) > MAX_INPUTS:
        raise APIError(400, f"input has {len(items)} items; the limit is {MAX_INPUTS}", "invalid_value", "input")
    for i, item in enumerate(items):
        if not item:
            where = "input" if isinstance(value, str) or value is items[0] else f"input.{i}"
            raise APIError(400, f"{where} is empty: every input needs text (or token ids)", "invalid_value", where)
    return items


@router.post("/v1/embeddings")
async def embeddings(request: Request):
    req = await read_body(request, EmbeddingRequest)
    check_embedding_model(req.model)
    if req.dimensions is not None and req.dimensions != EMBEDDING_DIMENSIONS:
        raise APIError(400, f"dimensions={req.dimensions}: {EMBEDDING_MODEL_ID} gives {EMBEDDING_DIMENSIONS} "
                            f"dimensions, and shortening its vectors is not supported", "invalid_value", "dimensions")
    items = _inputs(req.input)
    model = embedding_model(request)
    result = await embed_admitted(request, lambda: model.embed(items, truncate=False))
    if req.encoding_format == "base64":
        encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in result.vectors]
    else:
        encoded = result.vectors.tolist()
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
        "model": EMBEDDING_MODEL_ID,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
