"""`DataPipelineConfig`: one YAML file with sections ingest, clean, filter, dedup, export, split (and `workers`).

Each section is a dataclass whose fields carry a one-line docstring; `__post_init__` checks values and names
the field. The `data_collection` / `data_preparation` sections of the fine-tuning configs our users already
have are read too and mapped onto these fields (see `LEGACY_KEYS`).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from finetune.config_binding import ConfigError, apply_overrides, bind, load_config, unknown_key

REDACT_KINDS = ("url", "email", "phone", "ip", "card")
PREDICATE = re.compile(r"^\s*(metadata(?:\.[\w-]+)+)\s*(==|!=|<=|>=|<|>)\s*(.+?)\s*$")


@dataclass
class IngestConfig:
    paths: list[str] = field(default_factory=list)
    """Files or folders to read; a folder is searched recursively for files matching `include`."""
    include: list[str] = field(default_factory=lambda: ["*.jsonl", "*.json", "*.ndjson", "*.db", "*.sqlite",
                                                        "*.sqlite3"])
    """Name patterns of the files taken from folders (a file named in `paths` is always read)."""


@dataclass
class CleanConfig:
    redact: list[str] = field(default_factory=lambda: list(REDACT_KINDS))
    """PII kinds replaced by a typed placeholder such as <EMAIL>: url, email, phone, ip, card."""
    phone_region: str = "US"
    """Region for phone numbers written without a +country code (ISO 3166 code, e.g. US, GB, DE)."""
    normalize: bool = True
    """Unicode NFC, line endings to LF, odd spaces to ' ', trailing spaces and control characters removed."""

    def __post_init__(self):
        bad = [k for k in self.redact if k not in REDACT_KINDS]
        if bad:
            raise ConfigError(f"clean.redact: unknown kind {bad[0]!r}; choose from {', '.join(REDACT_KINDS)}")
        if not re.fullmatch(r"[A-Z]{2}", self.phone_region):
            raise ConfigError(f"clean.phone_region must be a 2-letter region code like US, got {self.phone_region!r}")


@dataclass
class FilterConfig:
    min_chars: int | None = None
    """Fewest characters over all messages of a conversation."""
    max_chars: int | None = None
    """Most characters over all messages of a conversation."""
    min_tokens: int | None = None
    """Fewest tokens of the target model's tokenizer (the conversation rendered with its chat template)."""
    max_tokens: int | None = None
    """Most tokens; set it to the training max_length so nothing is truncated silently."""
    tokenizer: str | None = None
    """Tokenizer for token lengths: an embedded model name, HF folder or GGUF file (None: the default model)."""
    min_turns: int = 1
    """Fewest assistant turns (each one is a training target)."""
    metadata: list[str] = field(default_factory=list)
    """Predicates all of which must hold, e.g. 'metadata.augmented == true' (ops: == != < <= > >=)."""
    language: list[str] | None = None
    """Keep only conversations in these ISO 639-1 languages, e.g. [en] (needs py3langid)."""
    max_repetition: float | None = 0.5
    """Reject a turn whose most frequent word 3-gram covers more than this share of it (None: off)."""
    role_order: bool = True
    """Require system? then user/assistant alternating, ending with assistant."""
    allow_consecutive_assistant: bool = False
    """With role_order, accept two assistant turns in a row."""

    def __post_init__(self):
        for name in ("min_chars", "max_chars", "min_tokens", "max_tokens", "min_turns"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"filter.{name} must be >= 0, got {value}")
        for lo, hi in (("min_chars", "max_chars"), ("min_tokens", "max_tokens")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ConfigError(f"filter.{lo}={a} is larger than filter.{hi}={b}")
        for p in self.metadata:
            if not PREDICATE.match(p):
                raise ConfigError(f"filter.metadata: cannot read {p!r}; write 'metadata.<key> <op> <value>' "
                                  "with op one of == != < <= > >=, e.g. 'metadata.augmented == true'")
        if self.max_repetition is not None and not 0 < self.max_repetition <= 1:
            raise ConfigError(f"filter.max_repetition must be in (0, 1], got {self.max_repetition}")

    @property
    def needs_tokenizer(self) -> bool:
        return self.tokenizer is not None or self.min_tokens is not None or self.max_tokens is not None


@dataclass
class DedupConfig:
    exact: bool = True
    """Drop conversations whose normalized text (case-folded, whitespace collapsed) was seen before."""
    near: bool = True
    """Drop near-duplicates: MinHash/LSH estimated Jaccard similarity of word 3-grams >= threshold."""
    threshold: float = 0.85
    """Near-duplicate Jaccard threshold."""
    num_perm: int = 128
    """MinHash permutations: more is more accurate and slower."""

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"dedup.threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 16:
            raise ConfigError(f"dedup.num_perm must be >= 16, got {self.num_perm}")


@dataclass
class ExportConfig:
    output_dir: str = "data/prepared"
    """Folder for the splits, stats.json, token_lengths.png and rejects.jsonl."""
    format_type: Literal["messages", "chatml", "alpaca", "instruction", "preference"] = "messages"
    """messages JSONL (the chat task), ChatML text JSONL, Alpaca JSON, instruction/context/response JSONL, or
    preference: TRL's prompt/chosen/rejected and prompt/completion/label JSONL (tasks dpo and kto)."""
    multi_turn: Literal["conversation", "per_turn"] = "conversation"
    """One example per conversation, or one per assistant turn (with the turns before it as context)."""
    keep_metadata: bool = True
    """Write each conversation's metadata (plus its origin, file:line) next to messages."""
    min_conversations: int = 100
    """Warn 'Training data too small' below this many kept conversations."""
    preference_task: Literal["auto", "dpo", "kto"] = "auto"
    """format_type preference: dpo writes prompt/chosen/rejected pairs (KTO records are rejected); kto writes
    prompt/completion/label, a pair as two examples (chosen true, rejected false); auto: the first record kept
    decides, and records of the other kind are rejected."""
    preference_style: Literal["auto", "conversational", "plain"] = "auto"
    """format_type preference: lists of messages or plain strings (TRL reads a file as one or the other); auto:
    the style of the first record kept. Records of the other style are rejected."""

    def __post_init__(self):
        if self.format_type == "preference" and self.multi_turn != "conversation":
            raise ConfigError("export.multi_turn=per_turn cannot apply to export.format_type=preference: a "
                              "preference record is one example (its prompt may hold earlier turns); set "
                              "multi_turn: conversation")
        for name in ("preference_task", "preference_style"):
            if getattr(self, name) != "auto" and self.format_type != "preference":
                raise ConfigError(f"export.{name}={getattr(self, name)} needs export.format_type=preference (it is "
                                  f"{self.format_type})")


@dataclass
class SplitConfig:
    train_ratio: float = 0.8
    """Share of the conversations in the train split."""
    validation_ratio: float = 0.1
    """Share in the validation split (the three ratios add up to 1)."""
    test_ratio: float = 0.1
    """Share in the test split, held out for `python -m finetune.evaluate`."""
    seed: int = 42
    """Seeds the split assignment and the MinHash permutations: same seed, same output."""
    group_by: str | None = None
    """A metadata key (e.g. tree_id) whose conversations must share a split; None: each conversation alone.
    Preference data is always grouped by prompt instead."""

    def __post_init__(self):
        ratios = (self.train_ratio, self.validation_ratio, self.test_ratio)
        if any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
            raise ConfigError(f"split: train_ratio + validation_ratio + test_ratio must be 1 with none negative, "
                              f"got {ratios}")
        if self.train_ratio == 0:
            raise ConfigError("split.train_ratio must be > 0: a run with no train split trains nothing")


@dataclass
class DataPipelineConfig:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    """What to read: chat logs in any format the pipeline detects."""
    clean: CleanConfig = field(default_factory=CleanConfig)
    """Text normalization and PII redaction."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    """Which conversations are kept (every rejection is counted by reason)."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """Exact and near-duplicate removal."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """Where the splits are written, and in which format."""
    split: SplitConfig = field(default_factory=SplitConfig)
    """How conversations are divided into train, validation and test."""
    workers: int | None = None
    """Worker processes for the per-record stages (None: one per core available; 1: no workers). The output is
    byte for byte the same whatever the number."""

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1 (or null for one per core), got {self.workers}")
        if self.export.format_type == "preference" and self.split.group_by is not None:
            raise ConfigError(f"split.group_by={self.split.group_by!r} cannot apply to export.format_type="
                              "preference: preference records are always grouped by prompt, so held-out pairs "
                              "never share a prompt with training; remove split.group_by")

    @property
    def preference(self) -> bool:
        return self.export.format_type == "preference"

    @property
    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every core counts
        return max(1, len(affinity(0)) if affinity is not None else os.cpu_count() or 1)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, overrides: list[str] = ()) -> DataPipelineConfig:
        return bind(cls, apply_overrides(translate_legacy(dict(data or {})), overrides))

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] = ()) -> DataPipelineConfig:
        """The file's sections (old sections translated), then `section.key=value` overrides."""
        return load_config(cls, path, build=lambda data: cls.from_dict(data, overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The fine-tuning config our users have (../shared seeds): data_collection / data_preparation keys -> ours.
LEGACY_KEYS = {
    "data_collection": {
        "log_file": ("ingest", "paths"),
        "min_conversation_length": ("filter", "min_chars"),
        "max_conversation_length": ("filter", "max_chars"),
    },
    "data_preparation": {
        "format_type": ("export", "format_type"),
        "max_length": ("filter", "max_tokens"),
        "train_ratio": ("split", "train_ratio"),
        "validation_ratio": ("split", "validation_ratio"),
        "test_ratio": ("split", "test_ratio"),
    },
}
# Keys of those sections that drive the chat app, not this pipeline; accepted so an old file loads.
LEGACY_IGNORED = {"auto_export", "export_interval"}


def translate_legacy(data: dict[str, Any]) -> dict[str, Any]:
    for section, mapping in LEGACY_KEYS.items():
        old = data.pop(section, None) or {}
        if not isinstance(old, dict):
            raise ConfigError(f"{section}: expected a mapping of keys, got {type(old).__name__}")
        for key, value in old.items():
            if key in LEGACY_IGNORED:
                continue
            if key not in mapping:
                raise unknown_key(section, key, [*mapping, *LEGACY_IGNORED])
            new_section, new_key = mapping[key]
            target = data.setdefault(new_section, {})
            if new_key in target:
                raise ConfigError(f"{section}.{key} and {new_section}.{new_key} set the same thing; keep one")
            target[new_key] = [value] if new_key == "paths" and isinstance(value, str) else value
    return data
