"""The dedup stage: exact (hash of the normalized text) and near-duplicate (MinHash + LSH), first one kept.

Split in two so the worker processes do the expensive part: `DedupKeys` are computed per conversation in any
process (the exact key, the MinHash signature, its LSH band keys); `DedupIndex` lives in the parent and decides
duplicates in input order, so the result does not depend on how the input was cut into chunks.

The signatures and the LSH band parameters (b, r) are datasketch's (see minhash.py). Its `MinHashLSH` keeps every
band key in Python dicts, gigabytes of RSS for a million conversations; here each band key and exact key is 8
bytes (a 32-bit fingerprint beside a 32-bit id, in sorted numpy runs; the oldest go to files past a fixed amount,
so memory stays flat), and the signatures, full keys and origins of kept conversations go to a scratch file. A candidate
found by fingerprint is confirmed with its full keys from that file, so the decisions are those of full 64-bit band
keys and 128-bit exact keys. Lookups stay sub-quadratic: each conversation queries its own b band keys, and only
the candidates found there are compared.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.data.config import DedupConfig
from finetune.data.minhash import MinHasher, shingle_words
from finetune.data.records import Conversation, Preference
from finetune.data.timing import StageClock

# Preference records (a prompt and its replies) are compared as whole examples. Exact: the key covers the prompt
# and every reply under its role (and KTO's label), so two pairs that share a prompt but not their replies both
# stay. Near: one MinHash signature over the whole record would be dominated by a long shared prompt (a 200-word
# question with two 5-word answers looks 95% alike to another pair on that question), so each part gets its own
# share of the permutations (permutation j is taken from part j mod the number of parts): the signatures' agreement
# then estimates the mean of the parts' Jaccard similarities, and a near duplicate needs its replies to be near
# duplicates too, not only its prompt.


def _normalized(messages: list[dict[str, str]]) -> str:
    return "\x1e".join(f"{m['role']}\x1f{_squeezed(m['content'].casefold())}{_calls(m)}" for m in messages)


def _calls(message: dict) -> str:
    """The calls of a reply, part of what makes it the reply it is: two replies calling with other arguments
    differ."""
    if not message.get("tool_calls"):
        return ""
    from finetune.tool_calls import call_body

    return "\x1f" + json.dumps([call_body(c) for c in message["tool_calls"]], sort_keys=True)


def _squeezed(text: str) -> str:
    """`" ".join(text.split())`: every run of whitespace one space, none at the ends. Printable text holds no
    whitespace but the plain space (the others are control or separator characters), so without two spaces in a
    row only its ends change: no list of words built."""
    return text.strip() if text.isprintable() and "  " not in text else " ".join(text.split())


def exact_key(item: Conversation | Preference) -> bytes:
    if isinstance(item, Preference):
        text = "\x1d".join(f"{part}\x1c{_normalized(messages)}" for part, messages in _parts(item))
    else:
        text = _normalized(item.messages)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def prompt_key(pref: Preference) -> str:
    """What groups preference records in the splits: the prompt, case and spacing aside."""
    return _normalized(pref.prompt)


def _parts(pref: Preference) -> list[tuple[str, list[dict[str, str]]]]:
    label = "" if pref.label is None else f"={pref.label}"  # a good and a bad verdict on one reply differ
    return [("prompt", pref.prompt), *((f"{k}{label}", v) for k, v in pref.replies.items())]


def preference_signatures(hasher: MinHasher, prefs: list[Preference]) -> np.ndarray:
    """uint32[n, num_perm]: each record's parts hashed separately, permutation j from part j mod its parts."""
    parts = [[_tagged(name, messages) for name, messages in _parts(p)] for p in prefs]
    flat = hasher.signatures([words for record in parts for words in record])
    cols = np.arange(flat.shape[1])
    out = np.empty((len(prefs), flat.shape[1]), dtype=np.uint32)
    at = 0
    for r, record in enumerate(parts):
        out[r] = flat[at + cols % len(record), cols]
        at += len(record)
    return out


def _tagged(name: str, messages: list[dict[str, str]]) -> list[str]:
    words = shingle_words(messages)
    # KTO's label goes into the words, so a reply judged good and the same reply judged bad are not near-alike.
    return [w + name[-5:] for w in words] if "=" in name else words


def lsh_parameters(cfg: DedupConfig, seed: int) -> tuple[np.ndarray, int, int]:
    """(permutations uint32[2, num_perm], bands, rows): drawn by datasketch from the seed, once, in the parent."""
    from datasketch import MinHash, MinHashLSH

    template = MinHash(num_perm=cfg.num_perm, seed=seed)  # scheme affine32, the default
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)  # only for its optimal (b, r)
    return np.asarray(template.permutations, dtype=np.uint32), lsh.b, lsh.r


@dataclass
class DedupKeys:
    """The dedup keys of n conversations, in input order (None: that kind of dedup is off)."""

    origins: list[str]
    exact: list[bytes] | None
    signatures: np.ndarray | None
    """uint32[n, num_perm]"""
    bands: np.ndarray | None
    """int64[n, bands]: the LSH band keys"""

    def take(self, indices: list[int]) -> DedupKeys:
        """The keys of the conversations at `indices` only."""
        return DedupKeys([self.origins[i] for i in indices],
                         None if self.exact is None else [self.exact[i] for i in indices],
                         None if self.signatures is None else self.signatures[np.asarray(indices, dtype=np.int64)],
                         None if self.bands is None else self.bands[np.asarray(indices, dtype=np.int64)])


class KeyMaker:
    """Computes `DedupKeys`; runs in the worker processes."""

    def __init__(self, cfg: DedupConfig, lsh: tuple[np.ndarray, int, int] | None):
        self.cfg = cfg
        self.hasher = MinHasher(*lsh) if cfg.near else None

    def keys(self, convs: list[Conversation] | list[Preference], clock: StageClock | None = None) -> DedupKeys:
        clock = clock or StageClock()
        exact = None
        if self.cfg.exact:
            exact = [exact_key(c) for c in convs]
            clock.lap("exact_dedup")
        sigs = bands = None
        if self.hasher is not None:
            if convs and isinstance(convs[0], Preference):  # a run holds one kind (chunks.ChunkWorker._kind)
                sigs = preference_signatures(self.hasher, convs)
            else:
                sigs = self.hasher.conversation_signatures([c.messages for c in convs])
            bands = self.hasher.band_keys(sigs)
            clock.lap("near_dedup")
        return DedupKeys([c.origin for c in convs], exact, sigs, bands)


class _FingerprintRuns:
    """uint32 fingerprint -> uint32 ids: sorted runs of `fp << 32 | id`, plus a Bloom bitmap that answers "not
    there" for almost every key without a search.

    Memory stays flat however long the input: the runs in memory hold at most `MEMORY_CAP` entries; past that
    they are merged into one sorted file (`spill`), of which memory keeps every 512th key (a fence per 4 KB
    page). A lookup finds the page of each query from the fences and reads only those pages, through a read-only
    memory map whose pages are handed back (MADV_DONTNEED) after each batch, so they never pile up in RSS."""

    RUN_CAP = 1 << 19  # entries; runs stop merging here, so a merge never copies more than 8 MB
    MEMORY_CAP = 1 << 19  # entries in memory (4 MB) before they go to a file
    PAGE = 512  # entries per page of a file run (4 KB)

    def __init__(self, bloom_bits: int, spill: Path | None = None):
        self.runs: list[np.ndarray] = []
        self.files: list[_FileRun] = []
        self.spill = spill
        self.bits = bloom_bits
        self.bloom = np.zeros(1 << (bloom_bits - 3), dtype=np.uint8)

    def add(self, fps: np.ndarray, ids: np.ndarray) -> None:
        if not len(fps):
            return
        packed = (fps.astype(np.uint64) << np.uint64(32)) | ids.astype(np.uint64)
        packed.sort()
        self.runs.append(packed)
        while (len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1])
               and len(self.runs[-2]) + len(self.runs[-1]) <= self.RUN_CAP):
            last = self.runs.pop()
            self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]), kind="stable")  # merges two runs
        slot = self._slots(fps)
        np.bitwise_or.at(self.bloom, slot >> 3, (1 << (slot & 7)).astype(np.uint8))
        if self.spill is not None and sum(map(len, self.runs)) > self.MEMORY_CAP:
            merged = np.sort(np.concatenate(self.runs))
            self.runs = []
            self.files.append(_FileRun(self.spill.with_name(f"{self.spill.name}-{len(self.files)}.bin"), merged,
                                       self.PAGE))

    def entries(self) -> np.ndarray:
        """Every stored `fp << 32 | id` (tests)."""
        return np.concatenate([*self.runs, *(f.keys for f in self.files), np.empty(0, np.uint64)])

    def lookup(self, fps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query positions, ids) of every stored entry whose fingerprint equals a query's."""
        slot = self._slots(fps)
        maybe = np.flatnonzero((self.bloom[slot >> 3] >> (slot & 7)) & 1)
        if not len(maybe) or not (self.runs or self.files):
            return np.empty(0, np.int64), np.empty(0, np.uint64)
        low = fps[maybe].astype(np.uint64) << np.uint64(32)
        high = low | np.uint64(0xFFFFFFFF)
        where, found = [], []
        for run in self.runs:
            start = np.searchsorted(run, low, "left")
            count = np.searchsorted(run, high, "right") - start
            hit = np.flatnonzero(count)
            for q in hit:  # hits are rare: real duplicates, or a fingerprint that collides
                where.extend([maybe[q]] * int(count[q]))
                found.extend(run[start[q] : start[q] + count[q]] & np.uint64(0xFFFFFFFF))
        for file in self.files:
            q, entries = file.lookup(low, high)
            where.extend(maybe[q].tolist())
            found.extend(entries & np.uint64(0xFFFFFFFF))
        return np.asarray(where, dtype=np.int64), np.asarray(found, dtype=np.uint64)

    def close(self) -> None:
        for file in self.files:
            file.close()
        self.files = []

    def _slots(self, fps: np.ndarray) -> np.ndarray:
        mixed = fps.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # the low bits of fps may be structured
        return (mixed >> np.uint64(64 - self.bits)).astype(np.int64)


class _FileRun:
    """One sorted run of uint64 keys in a file, searched through a memory map and the keys at each page's start."""

    def __init__(self, path: Path, keys: np.ndarray, page: int):
        keys.tofile(path)
        self.page, self.n = page, len(keys)
        self.fences = keys[::page].copy()
        self._file = open(path, "rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.keys = np.frombuffer(self._map, dtype=np.uint64)

    def lookup(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query indices, keys) of the keys in [low[q], high[q]]."""
        first = np.maximum(np.searchsorted(self.fences, low, "left") - 1, 0)  # the page where low's keys may start
        last = np.searchsorted(self.fences, high, "right") - 1  # ... and where high's may end
        where, found = [], []
        single = np.flatnonzero(first == last)
        # The usual case: every key of the fingerprint on one page; 256 queries at a time (a few MB of pages
        # and comparisons at once, not a copy of every page a chunk's queries touch).
        for at in range(0, len(single), 256):
            one = single[at : at + 256]
            cols = first[one, None] * self.page + np.arange(self.page)
            pages = self.keys[np.minimum(cols, self.n - 1)]
            inside = (pages >= low[one, None]) & (pages <= high[one, None]) & (cols < self.n)
            rows, col = np.nonzero(inside)
            where.append(one[rows])
            found.append(pages[rows, col])
        for q in np.flatnonzero(first != last):  # a fingerprint whose keys span pages
            span = self.keys[first[q] * self.page : (last[q] + 1) * self.page]
            hits = span[(span >= low[q]) & (span <= high[q])]
            where.append(np.full(len(hits), q))
            found.append(hits)
        if hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)  # the pages read stay in the page cache, not in this RSS
        if not where:
            return np.empty(0, np.int64), np.empty(0, np.uint64)
        return np.concatenate(where).astype(np.int64), np.concatenate(found)

    def close(self) -> None:
        del self.keys
        self._map.close()
        self._file.close()


class DedupIndex:
    """Duplicate decisions in input order; lives in the parent process. `decide(keys)` returns, for each
    conversation, `(code, detail)` when it duplicates one kept before (earlier in the batch or in an earlier
    batch), else None, and remembers the ones it keeps."""

    BLOOM_BITS = 26  # 8 MB per bitmap whatever the input, so memory is flat; about 1 in 15 misses at 1 GB of chats

    def __init__(self, cfg: DedupConfig, work: Path, lsh: tuple[np.ndarray, int, int] | None):
        self.cfg = cfg
        self.maker = KeyMaker(cfg, lsh)  # to confirm a candidate's band keys from its stored signature
        self.kept = 0
        self.candidates_checked = 0  # signatures compared; tests check that it stays far below n^2
        num_perm = len(lsh[0][0]) if cfg.near else 1
        self._record = np.dtype([("key", "V16"), ("origin_at", "<i8"), ("origin_len", "<i4"),
                                 ("sig", "<u4", (num_perm,))])
        self._exact = _FingerprintRuns(self.BLOOM_BITS, work / "dedup-exact")
        self._bands = _FingerprintRuns(self.BLOOM_BITS, work / "dedup-bands")
        self._records = open(work / "dedup-kept.bin", "w+b", buffering=0)
        self._origins = open(work / "dedup-origins.bin", "w+b", buffering=0)
        self._origins_size = 0

    def close(self) -> None:
        self._exact.close()
        self._bands.close()
        self._records.close()
        self._origins.close()

    def decide(self, keys: DedupKeys, clock: StageClock | None = None) -> list[tuple[str, str] | None]:
        clock = clock or StageClock()
        n = len(keys.origins)
        exact_hits = self._global_hits(self._exact, keys.exact, n) if keys.exact is not None else {}
        clock.lap("exact_dedup")
        band_hits = self._global_hits(self._bands, keys.bands, n) if keys.bands is not None else {}
        clock.lap("near_dedup")
        verdicts: list[tuple[str, str] | None] = []
        kept: list[int] = []
        local_exact: dict[bytes, int] = {}
        local_bands: dict[int, list[int]] = {}
        bands = keys.bands.tolist() if keys.bands is not None else None  # Python ints: cheap dict keys
        # A conversation with no candidate, none found before this batch and no key it shares with another in the
        # batch, is nobody's duplicate here and nobody's original: it is kept without being matched, and its keys
        # stay out of the batch's dicts (no other conversation looks them up). Most conversations are such.
        exact_shared = _shared_exact(keys.exact) if keys.exact is not None else None
        band_shared = _shared_rows(keys.bands).tolist() if keys.bands is not None else None
        for i in range(n):
            verdict = None
            if keys.exact is not None and (i in exact_hits or keys.exact[i] in exact_shared):
                verdict = self._exact_match(keys, i, exact_hits.get(i, ()), local_exact)
                clock.lap("exact_dedup")
            if verdict is None and bands is not None and (band_shared[i] or i in band_hits):
                verdict = self._near_match(keys, i, bands[i], band_hits.get(i, ()), local_bands)
                clock.lap("near_dedup")
            verdicts.append(verdict)
            if verdict is None:
                if keys.exact is not None and keys.exact[i] in exact_shared:
                    local_exact[keys.exact[i]] = i
                if bands is not None and band_shared[i]:
                    for k in bands[i]:
                        local_bands.setdefault(k, []).append(i)
                kept.append(i)
        self._remember(keys, kept)
        clock.lap("near_dedup" if keys.bands is not None else "exact_dedup")
        return verdicts

    # --- matching ---

    def _global_hits(self, runs: _FingerprintRuns, values, n: int) -> dict[int, list[int]]:
        if not self.kept or not n:
            return {}
        if isinstance(values, list):  # the exact keys, 16 bytes each
            fps = np.frombuffer(b"".join(v[:4] for v in values), dtype="<u4")
            per = 1
        else:
            per = values.shape[1]
            fps = (values.reshape(-1).view(np.uint64) >> np.uint64(32)).astype(np.uint32)
        where, ids = runs.lookup(fps)
        hits: dict[int, list[int]] = {}
        for q, gid in zip((where // per).tolist(), ids.tolist()):
            hits.setdefault(q, []).append(gid)
        return hits

    def _exact_match(self, keys: DedupKeys, i: int, global_ids, local: dict[bytes, int]):
        key = keys.exact[i]
        for gid in sorted(set(global_ids)):
            record = self._read(gid)
            if record["key"].tobytes() == key:
                return "exact", f"same normalized text as {self._origin(record)}"
        j = local.get(key)
        if j is not None:
            return "exact", f"same normalized text as {keys.origins[j]}"
        return None

    def _near_match(self, keys: DedupKeys, i: int, bands: list[int], global_ids, local: dict[int, list[int]]):
        sig, band_keys = keys.signatures[i], set(bands)
        # LSH only proposes candidates; the signatures' agreement estimates the Jaccard similarity. Earlier
        # conversations first, as the first kept one is named.
        for gid in sorted(set(global_ids)):
            record = self._read(gid)
            other = record["sig"]
            if band_keys.isdisjoint(self.maker.hasher.band_keys(other).tolist()):
                continue  # only the 32-bit fingerprint matched
            found = self._similar(sig, other)
            if found is not None:
                return "near", f"{found} with {self._origin(record)}"
        for j in sorted({j for k in bands for j in local.get(k, ())}):
            found = self._similar(sig, keys.signatures[j])
            if found is not None:
                return "near", f"{found} with {keys.origins[j]}"
        return None

    def _similar(self, sig: np.ndarray, other: np.ndarray) -> str | None:
        self.candidates_checked += 1
        similarity = float(np.mean(other == sig))
        if similarity >= self.cfg.threshold:
            return f"estimated Jaccard {similarity:.2f} >= {self.cfg.threshold}"
        return None

    # --- the kept conversations ---

    def _remember(self, keys: DedupKeys, kept: list[int]) -> None:
        if not kept:
            return
        ids = np.arange(self.kept, self.kept + len(kept), dtype=np.uint32)
        records = np.zeros(len(kept), dtype=self._record)
        origins = [keys.origins[i].encode("utf-8", "surrogatepass") for i in kept]
        lengths = np.fromiter(map(len, origins), dtype=np.int64, count=len(origins))
        records["origin_len"] = lengths
        records["origin_at"] = self._origins_size + np.cumsum(lengths) - lengths
        self._origins.write(b"".join(origins))
        self._origins_size += int(lengths.sum())
        if keys.exact is not None:
            exact = b"".join(keys.exact[i] for i in kept)
            records["key"] = np.frombuffer(exact, dtype="V16")
            self._exact.add(np.frombuffer(exact, dtype="<u4").reshape(-1, 4)[:, 0].copy(), ids)
        if keys.signatures is not None:
            records["sig"] = keys.signatures[kept]
            bands = np.ascontiguousarray(keys.bands[kept])
            fps = (bands.view(np.uint64) >> np.uint64(32)).astype(np.uint32)
            self._bands.add(fps.reshape(-1), np.repeat(ids, bands.shape[1]))
        self._records.write(records.tobytes())
        self.kept += len(kept)

    def _read(self, gid: int) -> np.void:
        size = self._record.itemsize
        return np.frombuffer(os.pread(self._records.fileno(), size, gid * size), dtype=self._record)[0]

    def _origin(self, record: np.void) -> str:
        data = os.pread(self._origins.fileno(), int(record["origin_len"]), int(record["origin_at"]))
        return data.decode("utf-8", "surrogatepass")


def _shared_exact(exact: list[bytes]) -> set[bytes]:
    """The exact keys that more than one conversation of the batch has."""
    return {key for key, count in Counter(exact).items() if count > 1}


def _shared_rows(bands: np.ndarray) -> np.ndarray:
    """bool[n]: which rows of `bands` (int64[n, bands]) hold a key that occurs more than once in the whole array."""
    if not bands.size:
        return np.zeros(len(bands), dtype=bool)
    flat = bands.reshape(-1)
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    repeated = np.zeros(len(flat), dtype=bool)
    same = ordered[1:] == ordered[:-1]
    repeated[order[1:][same]] = True
    repeated[order[:-1][same]] = True
    return repeated.reshape(bands.shape).any(axis=1)


class Deduplicator:
    """One conversation at a time: `check(conv)` returns `(code, detail)` for a duplicate of something kept
    earlier, else remembers it. The pipeline itself works on batches (KeyMaker in the workers, DedupIndex here)."""

    def __init__(self, cfg: DedupConfig, work: Path, seed: int):
        lsh = lsh_parameters(cfg, seed) if cfg.near else None
        self.maker = KeyMaker(cfg, lsh)
        self.index = DedupIndex(cfg, Path(work), lsh)

    def check(self, conv: Conversation) -> tuple[str, str] | None:
        return self.index.decide(self.maker.keys([conv]))[0]

    def close(self) -> None:
        self.index.close()
