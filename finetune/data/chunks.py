"""Cut the input into chunks and run the per-record stages on each, in worker processes or in this one.

A chunk is a byte range of whole lines of a JSON Lines file (the parent reads the file once to find where the
range ends and to count its lines, so every record's file:line is known before a worker parses it), or a batch
of records the parent read from a JSON array or an SQLite chat log. A worker parses, cleans, filters and counts
tokens, computes the dedup keys, writes the examples of each conversation that passed to the chunk's staging
file, and sends back what the parent needs: the rejects (as rejects.jsonl lines), the keys, the counts. Nothing
it does depends on another chunk; the parent takes the chunks in input order and decides duplicates itself, so
the output is byte for byte the same for any number of workers.
"""

from __future__ import annotations

import collections
import itertools
import json
import multiprocessing
import os
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from finetune.data.clean import clean_conversation, clean_preference
from finetune.data.config import DataPipelineConfig
from finetune.data.dedup import DedupKeys, KeyMaker
from finetune.data.export import preference_layout, render_lines, render_preference
from finetune.data.filters import build_filters, count_record_tokens, first_failure, length_bounds
from finetune.data.records import Conversation, Preference, Reject
from finetune.data.sources import read_jsonl_range, read_source, sniff
from finetune.data.split import SPLITS, GroupSplitter, prompt_group
from finetune.data.timing import StageClock

CHUNK_BYTES = 4 << 20
"""JSON Lines are cut into ranges of about this many bytes (whole lines)."""
CHUNK_RECORDS = 2000
"""Records per chunk from a JSON array or a chat log (the parent reads those)."""


@dataclass
class Chunk:
    index: int
    path: str
    offset: int = 0
    """JSON Lines: the range's first byte, its length and the number of its first line."""
    length: int = 0
    first_line: int = 1
    items: list[Conversation | Reject] | None = None
    """Other sources: the records, read by the parent."""


@dataclass
class ChunkResult:
    records: int
    """Records read, rejects included."""
    formats: Counter
    redactions: Counter
    order: list[int]
    """One entry per record, in input order: c >= 0 is candidate c (it passed every filter); -1 - k is rejects[k]."""
    rejects: list[tuple[str, str]]
    """(reason, its rejects.jsonl line)"""
    keys: DedupKeys | None
    """The candidates' dedup keys (None: dedup is off)."""
    origins: list[str]
    lengths: list[int]
    """Tokens (or words) of each candidate, for the histogram."""
    where: list[Any]
    """Where each candidate's record is, to write it into rejects.jsonl if the parent finds it a duplicate:
    (byte offset, size) of its line, or its index in Chunk.items."""
    staging: str
    offsets: np.ndarray
    """Candidate c's examples are bytes [offsets[c], offsets[c + 1]) of the staging file."""
    groups: np.ndarray | None
    """split.group_by: each candidate's split (an index into SPLITS), a function of its group key alone."""
    seconds: tuple[dict[str, float], dict[str, float]]
    """Wall and CPU seconds per stage in the worker (`StageClock.take`)."""
    layouts: list[tuple[str, bool]] | None = None
    """Preference export: each candidate's rows (dpo or kto) and whether it was read from plain strings; the parent
    keeps one layout per run."""
    prompts: np.ndarray | None = None
    """Preference export: uint64 hash of each candidate's prompt, its group in the splits."""


def plan_chunks(files: list[Path], read_seconds: list[float]) -> Iterator[Chunk]:
    """The chunks of every file in order. The parent's own reading time is added to `read_seconds[0]`."""
    index = 0
    for path in files:
        start = perf_counter()
        if sniff(path) == "jsonl":
            with open(path, "rb") as f:
                offset, line = 0, 1
                while data := f.read(CHUNK_BYTES):
                    if not data.endswith(b"\n"):
                        data += f.readline()  # to the end of the line (or of the file)
                    chunk = Chunk(index, str(path), offset, len(data), line)
                    offset, line, index = offset + len(data), line + data.count(b"\n"), index + 1
                    read_seconds[0] += perf_counter() - start
                    yield chunk
                    start = perf_counter()
            read_seconds[0] += perf_counter() - start
            continue
        batch: list[Conversation | Reject] = []
        for item in read_source(path):
            batch.append(item)
            if len(batch) == CHUNK_RECORDS:
                read_seconds[0] += perf_counter() - start
                yield Chunk(index, str(path), items=batch)
                index, batch, start = index + 1, [], perf_counter()
        read_seconds[0] += perf_counter() - start
        if batch:
            yield Chunk(index, str(path), items=batch)
            index += 1


class ChunkWorker:
    """The per-record stages, set up once per process."""

    def __init__(self, cfg: DataPipelineConfig, work: str, lsh):
        self.cfg, self.work = cfg, Path(work)
        self.tokenizer = load_tokenizer(cfg)
        self.filters = build_filters(cfg.filter)  # without the token filter: that one runs on a whole batch
        self.keys = KeyMaker(cfg.dedup, lsh) if cfg.dedup.exact or cfg.dedup.near else None
        ratios = {s: r for s, r in split_ratios(cfg).items() if r > 0}
        self.groups = GroupSplitter(ratios, cfg.split.seed) if cfg.split.group_by else None
        self.clock = StageClock()

    def process(self, chunk: Chunk) -> ChunkResult:
        clock = self.clock
        clock.restart()
        formats, redactions = Counter(), Counter()
        entries: list[Reject | tuple[Conversation | Preference, Any]] = []
        records = 0
        for item, where in self._read(chunk):
            records += 1
            clock.lap("read")
            if not isinstance(item, Reject):
                formats[item.format] += 1
                item = self._kind(item)
            if not isinstance(item, Reject):
                item = self._clean_and_filter(item, redactions, clock)
            entries.append(item if isinstance(item, Reject) else (item, where))
        if self.tokenizer is not None:
            self._token_filter(entries, clock)
        order, rejects, candidates, where = [], [], [], []
        for entry in entries:
            if isinstance(entry, Reject):
                order.append(-1 - len(rejects))
                rejects.append((entry.reason, json.dumps(entry.to_json(), ensure_ascii=False) + "\n"))
            else:
                order.append(len(candidates))
                candidates.append(entry[0])
                where.append(entry[1])
        clock.lap("write")
        keys = self.keys.keys(candidates, clock) if self.keys is not None else None
        staging, offsets, groups = self._stage(chunk.index, candidates, clock)
        lengths = [c.n_tokens if c.n_tokens is not None else _words(c) for c in candidates]
        task = self.cfg.export.preference_task
        layouts = prompts = None
        if self.cfg.preference:
            layouts = [(preference_layout(c, task), c.plain) for c in candidates]
            prompts = np.array([prompt_group(c) for c in candidates], dtype=np.uint64)
        return ChunkResult(records, formats, redactions, order, rejects, keys, [c.origin for c in candidates],
                           lengths, where, staging, offsets, groups, clock.take(), layouts,
                           prompts)

    def _kind(self, item: Conversation | Preference) -> Conversation | Preference | Reject:
        """A split file holds chat data or preference data, as export.format_type says, never both; tool calls
        and results only in `messages` (chatml, alpaca and instruction have no place for them)."""
        fmt = self.cfg.export.format_type
        if isinstance(item, Conversation) and item.has_tool_parts and fmt != "messages":
            return Reject("ingest", "tool_calls", f"a conversation with tools, tool calls or tool results, which "
                          f"export.format_type={fmt} has no place for: set export.format_type=messages", item.origin,
                          item.raw)
        if isinstance(item, Preference) == self.cfg.preference:
            return item
        if self.cfg.preference:
            detail = (f"a chat record ({item.format}), but export.format_type=preference writes preference data: "
                      "prepare chat and preference records in separate runs")
        else:
            detail = (f"a preference record ({item.format}), but export.format_type={fmt} writes chat data: set "
                      "export.format_type=preference, or prepare chat and preference records in separate runs")
        return Reject("ingest", "wrong_kind", detail, item.origin, item.raw)

    def _read(self, chunk: Chunk) -> Iterator[tuple[Conversation | Reject, Any]]:
        if chunk.items is not None:
            yield from zip(chunk.items, range(len(chunk.items)))
        else:
            for item, at, size in read_jsonl_range(chunk.path, chunk.offset, chunk.length, chunk.first_line):
                yield item, (at, size)

    def _clean_and_filter(self, item: Conversation | Preference, redactions: Counter,
                          clock: StageClock) -> Conversation | Preference | Reject:
        if isinstance(item, Preference):
            cleaned = clean_preference(item, self.cfg.clean, redactions, clock)
        else:
            cleaned = clean_conversation(item, self.cfg.clean, redactions, clock)
        if isinstance(cleaned, Reject):
            return cleaned
        verdict = first_failure(cleaned, self.filters)
        clock.lap("filters")
        if verdict is not None:
            return Reject("filter", verdict[0], verdict[1], item.origin, item.raw)
        return cleaned

    def _token_filter(self, entries: list, clock: StageClock) -> None:
        """The token-length filter, last as in `build_filters`, on every conversation of the chunk at once."""
        at = [i for i, e in enumerate(entries) if not isinstance(e, Reject)]
        counts = count_record_tokens([entries[i][0] for i in at], self.tokenizer)
        f = self.cfg.filter
        for i, n in zip(at, counts):
            conv = entries[i][0]
            conv.n_tokens = n
            verdict = length_bounds(n, f.min_tokens, f.max_tokens, "tokens")
            if verdict is not None:
                entries[i] = Reject("filter", verdict[0], verdict[1], conv.origin, conv.raw)
        clock.lap("tokens")

    def _stage(self, index: int, convs: list[Conversation] | list[Preference], clock: StageClock):
        e = self.cfg.export
        parts = [render_preference(c, e.preference_task, e.keep_metadata) if isinstance(c, Preference) else
                 render_lines(c.messages, c.metadata, c.origin, e.format_type, e.multi_turn, e.keep_metadata,
                              c.tools)
                 for c in convs]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in parts], out=offsets[1:])
        path = self.work / f"stage-{index:06d}.bin"
        path.write_bytes(b"".join(parts))
        clock.lap("write")
        groups = None
        if self.groups is not None:
            group_by = self.cfg.split.group_by
            # A conversation without the key is a group of its own.
            groups = np.array([SPLITS.index(self.groups.assign(c.metadata.get(group_by, {"origin": c.origin})))
                               for c in convs], dtype=np.uint8)
            clock.lap("split")
        return str(path), offsets, groups



def _words(item: Conversation | Preference) -> int:
    if isinstance(item, Preference):
        return max(_words(view) for view in item.views())
    return sum(len(m["content"].split()) for m in item.messages)


def split_ratios(cfg: DataPipelineConfig) -> dict[str, float]:
    return {"train": cfg.split.train_ratio, "validation": cfg.split.validation_ratio, "test": cfg.split.test_ratio}


def load_tokenizer(cfg: DataPipelineConfig):
    if not cfg.filter.needs_tokenizer:
        return None
    # Imported here: transformers is heavy, and only a token-length filter needs it.
    from finetune.models import load_tokenizer

    return load_tokenizer(cfg.filter.tokenizer)


def run_chunks(chunks: Iterator[Chunk], cfg: DataPipelineConfig, work: Path, lsh, workers: int,
               used: dict[str, int] | None = None) -> Iterator[tuple[Chunk, ChunkResult]]:
    """`(chunk, result)` in input order; with `workers` > 1 and more than one chunk, from a pool of processes
    that holds at most 2 chunks per worker in flight. `used["workers"]` says how many processes ran (0: this one)."""
    first = list(itertools.islice(chunks, 2))
    chunks = itertools.chain(first, chunks)
    used = used if used is not None else {}
    used["workers"] = 0 if workers <= 1 or len(first) < 2 else workers
    if not used["workers"]:
        worker = ChunkWorker(cfg, str(work), lsh)
        for chunk in chunks:
            yield chunk, worker.process(chunk)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(_start_method()),
                               initializer=_init_worker, initargs=(cfg, str(work), lsh))
    try:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append((chunk, pool.submit(_process, chunk)))
            if len(pending) >= 2 * workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _start_method() -> str:
    """fork when this process has one thread: quick, and a script needs no `if __name__ == "__main__"` guard.
    With other threads (a server, a tokenizer's pool) a fork could copy a lock some thread holds: spawn."""
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return "spawn"


_WORKER_ARGS: tuple | None = None
_WORKER: ChunkWorker | None = None


def _init_worker(cfg: DataPipelineConfig, work: str, lsh) -> None:
    global _WORKER_ARGS
    _WORKER_ARGS = (cfg, work, lsh)
    # One process per core already: a tokenizer's own thread pool would only oversubscribe the cores.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _process(chunk: Chunk) -> ChunkResult:
    global _WORKER
    if _WORKER is None:  # here rather than in the initializer, so a setup error reaches the parent as itself
        _WORKER = ChunkWorker(*_WORKER_ARGS)
    return _WORKER.process(chunk)
