"""`prepare_dataset`: ingest -> clean -> filter -> dedup -> (staging file) -> split -> export, plus stats.

Two streaming passes. The first reads every record once and writes the conversations it keeps to a staging
file in the output folder; the second knows how many were kept, so it can cut exact, seeded split sizes.
Memory holds one record at a time (the dedup index is an SQLite file), whatever the size of the input.
rejects.jsonl keeps each rejected record as it was read, personal data included: keep it as private as the logs.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.config_binding import ConfigError
from finetune.data.clean import clean_conversation
from finetune.data.config import DataPipelineConfig
from finetune.data.dedup import Deduplicator
from finetune.data.export import EXTENSIONS, SplitWriter, examples, render
from finetune.data.filters import build_filters, first_failure
from finetune.data.records import Conversation, Reject
from finetune.data.sources import discover, read_source
from finetune.data.split import SPLITS, ExactSplitter, GroupSplitter
from finetune.data.stats import Stats, plot_histogram
from finetune.errors import UserError

logger = logging.getLogger(__name__)


class NoConversationsError(UserError):
    """Every record was rejected; the message lists the rejections per reason."""


class SmallDatasetWarning(UserWarning):
    """Fewer conversations kept than `export.min_conversations`."""


@dataclass
class PrepareResult:
    output_dir: Path
    splits: dict[str, Path]
    """Split name -> file, only for splits with a non-zero ratio."""
    stats: dict[str, Any]
    rejects: Path


def _require_backends(cfg: DataPipelineConfig) -> None:
    """The data extra's libraries this config uses, checked before any file is read."""
    from finetune.extras import require

    if "phone" in cfg.clean.redact:
        require("phonenumbers", "clean.redact: phone")
    if cfg.dedup.near:
        require("datasketch", "dedup.near")
    require("matplotlib", "The token-length plot (token_lengths.png)")


def prepare_dataset(config: DataPipelineConfig | dict | str | Path) -> PrepareResult:
    """Run the whole pipeline; see DataPipelineConfig for every setting.

    Raises:
        ConfigError: a config value is invalid (the message names the key).
        FileNotFoundError: an input path does not exist.
        SourceError: a whole input file cannot be read as data (an SQLite file that is not the chat log).
        NoConversationsError: nothing was left to train on (stats.json and rejects.jsonl are still written).
    """
    cfg = _as_config(config)
    if not cfg.ingest.paths:
        raise ConfigError("ingest.paths is empty: name the files or folders to read (or pass --input)")
    _require_backends(cfg)
    out = Path(cfg.export.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_old_outputs(out)
    files, skipped = discover(cfg.ingest.paths, cfg.ingest.include)
    tokenizer = _load_tokenizer(cfg)
    stats = Stats(unit="tokens" if tokenizer is not None else "words")
    stats.files, stats.files_skipped = [str(f) for f in files], [str(f) for f in skipped]
    rejects_path = out / "rejects.jsonl"
    with tempfile.TemporaryDirectory(dir=out, prefix=".staging-") as work:
        staging = Path(work) / "kept.jsonl"
        # backslashreplace: a lone surrogate in some metadata is written as its JSON escape, never a crash.
        with open(rejects_path, "w", encoding="utf-8", errors="backslashreplace") as rejects, \
                open(staging, "w", encoding="utf-8", errors="backslashreplace") as kept:
            for item in _first_pass(cfg, files, tokenizer, stats, Path(work)):
                if isinstance(item, Reject):
                    stats.reject(item)
                    rejects.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
                else:
                    kept.write(json.dumps(_staged(item), ensure_ascii=False) + "\n")
        stats.check_accounting(after_export=False)
        if stats.records_kept == 0:
            stats.write(out / "stats.json")
            raise NoConversationsError(_nothing_left_message(stats, rejects_path))
        split_files = _second_pass(cfg, staging, stats, out)
    stats.check_accounting(after_export=True)
    _warn_if_small(cfg, stats)
    plot_histogram(stats.histogram, out / "token_lengths.png")
    stats.write(out / "stats.json")
    return PrepareResult(output_dir=out, splits=split_files, stats=stats.to_dict(), rejects=rejects_path)


def _remove_old_outputs(out: Path) -> None:
    """A split file left by an earlier run (another format, a split now at ratio 0) would be mistaken for output."""
    for split in SPLITS:
        for ext in set(EXTENSIONS.values()):
            (out / f"{split}.{ext}").unlink(missing_ok=True)
    for name in ("stats.json", "token_lengths.png", "rejects.jsonl"):
        (out / name).unlink(missing_ok=True)


def _as_config(config: DataPipelineConfig | dict | str | Path) -> DataPipelineConfig:
    if isinstance(config, DataPipelineConfig):
        return config
    if isinstance(config, dict):
        return DataPipelineConfig.from_dict(config)
    return DataPipelineConfig.from_yaml(config)


def _load_tokenizer(cfg: DataPipelineConfig):
    if not cfg.filter.needs_tokenizer:
        return None
    # Imported here: transformers is heavy, and only a token-length filter needs it.
    from finetune.models import load_tokenizer

    return load_tokenizer(cfg.filter.tokenizer)


def _first_pass(cfg: DataPipelineConfig, files: list[Path], tokenizer, stats: Stats,
                work: Path) -> Iterator[Conversation | Reject]:
    filters = build_filters(cfg.filter, tokenizer)
    dedup = Deduplicator(cfg.dedup, work / "dedup.sqlite", cfg.split.seed) if cfg.dedup.exact or cfg.dedup.near \
        else None
    try:
        for path in files:
            for item in read_source(path):
                stats.records_read += 1
                if isinstance(item, Conversation):
                    stats.formats[item.format] += 1
                    item = _keep_or_reject(item, cfg, filters, dedup, stats)
                if isinstance(item, Conversation):
                    stats.records_kept += 1
                    stats.histogram.add(item.n_tokens if item.n_tokens is not None else _words(item))
                yield item
    finally:
        if dedup is not None:
            dedup.close()


def _keep_or_reject(conv: Conversation, cfg: DataPipelineConfig, filters, dedup, stats) -> Conversation | Reject:
    cleaned = clean_conversation(conv, cfg.clean, stats.redactions)
    if isinstance(cleaned, Reject):
        return cleaned
    verdict = first_failure(cleaned, filters)
    if verdict is not None:
        return Reject("filter", verdict[0], verdict[1], conv.origin, conv.raw)
    found = dedup.check(cleaned) if dedup is not None else None
    if found is not None:
        return Reject("dedup", found[0], found[1], conv.origin, conv.raw)
    return cleaned


def _words(conv: Conversation) -> int:
    return sum(len(m["content"].split()) for m in conv.messages)


def _staged(conv: Conversation) -> dict[str, Any]:
    return {"messages": conv.messages, "metadata": conv.metadata, "origin": conv.origin}


def _second_pass(cfg: DataPipelineConfig, staging: Path, stats: Stats, out: Path) -> dict[str, Path]:
    ratios = {"train": cfg.split.train_ratio, "validation": cfg.split.validation_ratio,
              "test": cfg.split.test_ratio}
    ratios = {s: r for s, r in ratios.items() if r > 0}
    fmt, ext = cfg.export.format_type, EXTENSIONS[cfg.export.format_type]
    splitter = GroupSplitter(ratios, cfg.split.seed) if cfg.split.group_by else \
        ExactSplitter(stats.records_kept, ratios, cfg.split.seed)
    writers = {s: SplitWriter(out / f"{s}.{ext}", fmt) for s in ratios}
    stats.splits = {s: {"conversations": 0, "examples": 0} for s in ratios}
    try:
        with open(staging, encoding="utf-8") as f:
            for line in f:
                conv = json.loads(line)
                split = splitter.assign(_group_key(conv, cfg.split.group_by))
                stats.splits[split]["conversations"] += 1
                for turn, messages in examples(conv["messages"], cfg.export.multi_turn):
                    meta = _export_metadata(conv, turn, cfg) if cfg.export.keep_metadata else None
                    writers[split].write(render(messages, meta, fmt))
                    stats.splits[split]["examples"] += 1
    finally:
        for w in writers.values():
            w.close()
    return {s: w.path for s, w in writers.items()}


def _group_key(conv: dict[str, Any], group_by: str | None) -> Any:
    if group_by is None:
        return None
    # A conversation without the key is a group of its own.
    return conv["metadata"].get(group_by, {"origin": conv["origin"]})


def _export_metadata(conv: dict[str, Any], turn: int, cfg: DataPipelineConfig) -> dict[str, Any]:
    meta = dict(conv["metadata"])
    meta.setdefault("origin", conv["origin"])
    if cfg.export.multi_turn == "per_turn":
        meta["turn"] = turn
    return meta


def _nothing_left_message(stats: Stats, rejects_path: Path) -> str:
    reasons = "\n".join(f"  {reason}: {n}" for reason, n in stats.rejected.most_common())
    return (f"No conversations to train on: all {stats.records_read} records read from {len(stats.files)} "
            f"file(s) were rejected.\nRejected by reason (relax the filter with the largest count):\n{reasons}\n"
            f"Each rejected record and its reason is in {rejects_path}")


def _warn_if_small(cfg: DataPipelineConfig, stats: Stats) -> None:
    if stats.records_kept < cfg.export.min_conversations:
        msg = (f"Training data too small: {stats.records_kept} conversations kept, fewer than "
               f"export.min_conversations={cfg.export.min_conversations}; a fine-tune on this little data "
               "will mostly memorize it")
        stats.warnings.append(msg)
        warnings.warn(msg, SmallDatasetWarning, stacklevel=3)
