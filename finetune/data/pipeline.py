"""`prepare_dataset`: ingest -> clean -> filter -> dedup -> (staging files) -> split -> export, plus stats.

Two streaming passes. The first cuts the input into chunks (chunks.py) that worker processes parse, clean, filter
and key for dedup, each writing the examples of its conversations to a staging file; this process takes the
chunks back in input order, decides duplicates (dedup.py), writes rejects.jsonl and counts every record. The
second knows how many were kept, so it can cut exact, seeded split sizes, and copies the staged examples to the
split files. The output is byte for byte the same whatever `workers` is. Memory holds a few chunks and the dedup
index's fixed part (its Bloom bitmaps and at most 4 MB of fingerprints each; the rest is in files), whatever the
size of the input; preference data adds a hash and a split per distinct prompt (splits are exact counts of
prompts).
Preference records (export.format_type: preference) take the same path as conversations; only the parent's
`LayoutCheck` (one kind of row and one style per file) and the split by prompt are theirs.
rejects.jsonl keeps each rejected record as it was read, personal data included: keep it as private as the logs.
"""

from __future__ import annotations

import json
import logging
import pickle
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, TextIO

import numpy as np

from finetune.config_binding import ConfigError
from finetune.data.chunks import Chunk, ChunkResult, plan_chunks, run_chunks, split_ratios
from finetune.data.config import DataPipelineConfig
from finetune.data.dedup import DedupIndex, lsh_parameters
from finetune.data.export import EXTENSIONS, SplitWriter
from finetune.data.records import Reject
from finetune.data.sources import discover, load_line
from finetune.data.split import SPLITS, ExactSplitter, FirstSeenGroupSplitter
from finetune.data.stats import Stats, plot_histogram
from finetune.data.timing import StageClock
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
    timings: dict[str, Any] = field(default_factory=dict)
    """Seconds per stage (summed over the worker processes and this one): `stages` wall time, `cpu` CPU time; the
    wall time of the whole run, and the worker processes that ran (0: the records were processed in this one, as
    with workers=1 or an input of one chunk)."""


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
    clock = StageClock()
    cfg = _as_config(config)
    if not cfg.ingest.paths:
        raise ConfigError("ingest.paths is empty: name the files or folders to read (or pass --input)")
    _require_backends(cfg)
    clock.lap("setup")
    out = Path(cfg.export.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_old_outputs(out)
    files, skipped = discover(cfg.ingest.paths, cfg.ingest.include)
    stats = Stats(unit="tokens" if cfg.filter.needs_tokenizer else "words")
    stats.files, stats.files_skipped = [str(f) for f in files], [str(f) for f in skipped]
    rejects_path = out / "rejects.jsonl"
    used = {"workers": 0}
    prompts: set[int] = set()  # preference data: the kept records' prompts, the groups of the splits
    with tempfile.TemporaryDirectory(dir=out, prefix=".staging-") as work:
        # backslashreplace: a lone surrogate in some metadata is written as its JSON escape, never a crash.
        with open(rejects_path, "w", encoding="utf-8", errors="backslashreplace") as rejects:
            staged = _first_pass(cfg, files, stats, Path(work), rejects, clock, used, prompts)
        stats.check_accounting(after_export=False)
        if stats.records_kept == 0:
            stats.write(out / "stats.json")
            raise NoConversationsError(_nothing_left_message(stats, rejects_path))
        split_files = _second_pass(cfg, staged, stats, out, clock, len(prompts))
    stats.check_accounting(after_export=True)
    _warn_if_small(cfg, stats)
    clock.lap("write")
    plot_histogram(stats.histogram, out / "token_lengths.png")
    clock.lap("plot")
    stats.write(out / "stats.json")
    clock.lap("write")
    timings = {"stages": clock.seconds, "cpu": clock.cpu, "wall": perf_counter() - clock.started,
               "workers": used["workers"]}
    return PrepareResult(output_dir=out, splits=split_files, stats=stats.to_dict(), rejects=rejects_path,
                         timings=timings)


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


@dataclass
class _Staged:
    """A chunk's kept conversations, for the second pass: where their examples are in its staging file, and
    their split when it follows from a group key."""

    staging: str
    spans: np.ndarray
    """int64[n, 2]: start and end in the staging file"""
    groups: np.ndarray | None
    prompts: np.ndarray | None = None
    """preference data: each record's prompt hash, its group"""


def _first_pass(cfg: DataPipelineConfig, files: list[Path], stats: Stats, work: Path, rejects: TextIO,
                clock: StageClock, used: dict[str, int], prompts: set[int]) -> list[Path]:
    """Every record read and accounted for: rejects written in input order, the kept ones staged. Returns the
    files that hold the staging plan of each chunk; `used["workers"]`: the worker processes that ran (0: none)."""
    dedup = lsh = None
    if cfg.dedup.exact or cfg.dedup.near:
        lsh = lsh_parameters(cfg.dedup, cfg.split.seed) if cfg.dedup.near else None
        dedup = DedupIndex(cfg.dedup, work, lsh)
    clock.lap("setup")
    plans: list[Path] = []
    read_seconds = [0.0]
    layout = LayoutCheck(cfg.export.preference_task, cfg.export.preference_style) if cfg.preference else None
    try:
        chunks = plan_chunks(files, read_seconds)
        for chunk, result in run_chunks(chunks, cfg, work, lsh, cfg.worker_count, used):
            clock.restart()  # the wait for this chunk's result is no stage of this process
            verdicts = layout.check(result) if layout is not None else [None] * len(result.origins)
            if dedup is not None:
                # A record of another layout is out before dedup: it must not shadow a later one as its duplicate.
                live = [i for i, v in enumerate(verdicts) if v is None]
                keys = result.keys if len(live) == len(verdicts) else result.keys.take(live)
                for i, verdict in zip(live, dedup.decide(keys, clock)):
                    verdicts[i] = None if verdict is None else ("dedup", *verdict)
            kept = _account(chunk, result, verdicts, stats, rejects)
            if result.prompts is not None:
                prompts.update(result.prompts[kept].tolist())
            plans.append(_save_plan(work, chunk.index, result, kept))
            clock.add(*result.seconds)
            clock.lap("write")
    finally:
        if dedup is not None:
            dedup.close()
    clock.add({"read": read_seconds[0]})
    return plans


def _account(chunk: Chunk, result: ChunkResult, verdicts: list, stats: Stats, rejects: TextIO) -> list[int]:
    """Count and write a chunk's records in input order; returns the candidates kept."""
    stats.records_read += result.records
    stats.formats.update(result.formats)
    stats.redactions.update(result.redactions)
    kept = []
    for entry in result.order:
        if entry < 0:
            reason, line = result.rejects[-1 - entry]
            stats.rejected[reason] += 1
            rejects.write(line)
            continue
        verdict = verdicts[entry]
        if verdict is None:
            kept.append(entry)
            stats.records_kept += 1
            stats.histogram.add(result.lengths[entry])
        else:
            reject = Reject(*verdict, result.origins[entry], _raw(chunk, result.where[entry]))
            stats.reject(reject)
            rejects.write(json.dumps(reject.to_json(), ensure_ascii=False) + "\n")
    return kept


class LayoutCheck:
    """A preference export holds one kind of row (DPO pairs or KTO examples) in one style (plain text or lists of
    messages): finetune_model and TRL read a file as all one or all the other. What export.preference_task and
    preference_style set, or with auto what the first record reaching this point has, in input order (so the
    choice does not depend on the workers); records of another layout are rejected."""

    def __init__(self, task: str, style: str):
        self.task = None if task == "auto" else task
        self.plain = None if style == "auto" else style == "plain"
        self.why = {"task": f"export.preference_task={task}", "style": f"export.preference_style={style}"}

    def check(self, result: ChunkResult) -> list[tuple[str, str, str] | None]:
        verdicts: list[tuple[str, str, str] | None] = []
        for (task, plain), origin in zip(result.layouts, result.origins):
            first = f"as the first record kept, {origin}"
            if self.task is None:
                self.task, self.why["task"] = task, first
            if self.plain is None:
                self.plain, self.why["style"] = plain, first
            if task != self.task:
                verdicts.append(("export", "mixed_kind", f"a {_KIND[task]}, but this export holds {_KIND[self.task]}s "
                                 f"({self.why['task']}): set export.preference_task=kto to write pairs as KTO "
                                 "examples too, or prepare the two kinds in separate runs"))
            elif plain != self.plain:
                verdicts.append(("export", "mixed_style", f"a {_STYLE[plain]} record, but this export holds "
                                 f"{_STYLE[self.plain]} ones ({self.why['style']}): TRL reads a preference file as "
                                 "all text or all conversations; convert one kind, or set export.preference_style"))
            else:
                verdicts.append(None)
        return verdicts


_KIND = {"dpo": "DPO pair", "kto": "KTO example"}
_STYLE = {True: "plain-text", False: "conversational"}


def _raw(chunk: Chunk, where) -> Any:
    """The record as read, for rejects.jsonl: the parent has it (a JSON array or a chat log), or reads its line."""
    if chunk.items is not None:
        return chunk.items[where].raw
    return load_line(chunk.path, *where)


def _save_plan(work: Path, index: int, result: ChunkResult, kept: list[int]) -> Path:
    """The second pass's part of a chunk, on disk rather than in memory: 16 bytes per kept conversation."""
    spans = np.stack([result.offsets[kept], result.offsets[np.asarray(kept, dtype=np.int64) + 1]], axis=1)
    groups = result.groups[kept] if result.groups is not None else None
    prompts = result.prompts[kept] if result.prompts is not None else None
    path = work / f"plan-{index:06d}.pickle"
    path.write_bytes(pickle.dumps(_Staged(result.staging, spans, groups, prompts)))
    return path


def _second_pass(cfg: DataPipelineConfig, plans: list[Path], stats: Stats, out: Path,
                 clock: StageClock, n_prompts: int) -> dict[str, Path]:
    ratios = {s: r for s, r in split_ratios(cfg).items() if r > 0}
    fmt, ext = cfg.export.format_type, EXTENSIONS[cfg.export.format_type]
    splitter = None if cfg.split.group_by else ExactSplitter(stats.records_kept, ratios, cfg.split.seed)
    if cfg.preference:
        splitter = FirstSeenGroupSplitter(n_prompts, ratios, cfg.split.seed)
    writers = {s: SplitWriter(out / f"{s}.{ext}", fmt) for s in ratios}
    stats.splits = {s: {"conversations": 0, "examples": 0} for s in ratios}
    clock.restart()
    try:
        for plan_path in plans:
            plan: _Staged = pickle.loads(plan_path.read_bytes())
            data = Path(plan.staging).read_bytes()
            clock.lap("read")
            prompts = plan.prompts.tolist() if plan.prompts is not None else None
            for i, (start, end) in enumerate(plan.spans.tolist()):
                if prompts is not None:
                    split = splitter.assign(prompts[i])
                else:
                    split = SPLITS[plan.groups[i]] if plan.groups is not None else splitter.assign()
                stats.splits[split]["conversations"] += 1
                stats.splits[split]["examples"] += writers[split].write_rendered(data[start:end])
            Path(plan.staging).unlink()
            clock.lap("write")
    finally:
        for w in writers.values():
            w.close()
    return {s: w.path for s, w in writers.items()}


def _nothing_left_message(stats: Stats, rejects_path: Path) -> str:
    reasons = "\n".join(f"  {reason}: {n}" for reason, n in stats.rejected.most_common())
    hint = "relax the filter with the largest count"
    if stats.rejected and stats.rejected.most_common(1)[0][0] == "ingest.wrong_kind":
        hint = "chat and preference records need export.format_type to match: see the detail in rejects.jsonl"
    return (f"No conversations to train on: all {stats.records_read} records read from {len(stats.files)} "
            f"file(s) were rejected.\nRejected by reason ({hint}):\n{reasons}\n"
            f"Each rejected record and its reason is in {rejects_path}")


def _warn_if_small(cfg: DataPipelineConfig, stats: Stats) -> None:
    if stats.records_kept < cfg.export.min_conversations:
        msg = (f"Training data too small: {stats.records_kept} conversations kept, fewer than "
               f"export.min_conversations={cfg.export.min_conversations}; a fine-tune on this little data "
               "will mostly memorize it")
        stats.warnings.append(msg)
        warnings.warn(msg, SmallDatasetWarning, stacklevel=3)
