"""The dedup stage: exact (hash of the normalized text) and near-duplicate (MinHash + LSH), first one kept.

MinHash signatures and the LSH band parameters come from `datasketch`. Its `MinHashLSH` keeps every band
key in Python dicts, which for a million conversations is gigabytes of RSS; here the same band keys live in
an SQLite file instead, so memory stays flat however large the input is. Lookups stay sub-quadratic: each
conversation queries its own b band keys through an index, and only the candidates found there are compared.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import zlib
from pathlib import Path

import numpy as np

from finetune.data.config import DedupConfig
from finetune.data.records import Conversation

SHINGLE = 3  # word 3-grams: short enough to catch rephrasings, long enough that common words don't match
_WORDS = re.compile(r"\w+")
_SCHEMA = """
CREATE TABLE exact (h BLOB PRIMARY KEY, origin TEXT) WITHOUT ROWID;
CREATE TABLE sigs (id INTEGER PRIMARY KEY, sig BLOB, origin TEXT);
CREATE TABLE bands (key INTEGER, id INTEGER, PRIMARY KEY (key, id)) WITHOUT ROWID;
"""


def exact_key(conv: Conversation) -> bytes:
    text = "\x1e".join(f"{m['role']}\x1f{' '.join(m['content'].casefold().split())}" for m in conv.messages)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def shingles(conv: Conversation) -> list[bytes]:
    # System prompts are left out: a long shared one would make unrelated conversations look alike.
    words = _WORDS.findall(" ".join(m["content"] for m in conv.messages if m["role"] != "system").casefold())
    if len(words) < SHINGLE:
        return [w.encode() for w in words] or [b""]
    return [" ".join(words[i : i + SHINGLE]).encode() for i in range(len(words) - SHINGLE + 1)]


class Deduplicator:
    """`check(conv)` returns `(code, detail)` for a duplicate of something kept earlier, else remembers it."""

    def __init__(self, cfg: DedupConfig, index_path: Path, seed: int):
        from datasketch import MinHash, MinHashLSH

        self.cfg = cfg
        self.db = sqlite3.connect(index_path)
        # A scratch index: it is rebuilt on every run, so durability would only cost time.
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-32000;")
        self.db.executescript(_SCHEMA)
        self._minhash = MinHash
        self._template = MinHash(num_perm=cfg.num_perm, seed=seed)  # permutations are drawn once, from the seed
        lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)  # only for its optimal (b, r)
        self.bands, self.rows = lsh.b, lsh.r
        self._pending = 0

    def check(self, conv: Conversation) -> tuple[str, str] | None:
        key = exact_key(conv) if self.cfg.exact else None
        if key is not None:
            row = self.db.execute("SELECT origin FROM exact WHERE h = ?", (key,)).fetchone()
            if row:
                return "exact", f"same normalized text as {row[0]}"
        sig = band_keys = None
        if self.cfg.near:
            sig = self._signature(conv)
            band_keys = self._band_keys(sig)
            found = self._near_match(sig, band_keys)
            if found:
                origin, similarity = found
                return "near", f"estimated Jaccard {similarity:.2f} >= {self.cfg.threshold} with {origin}"
        self._remember(conv.origin, key, sig, band_keys)
        return None

    def close(self) -> None:
        self.db.close()

    def _signature(self, conv: Conversation) -> np.ndarray:
        # crc32 hashes the shingles: deterministic, in C, and 3x faster than the default sha1 per shingle.
        m = self._minhash(num_perm=self.cfg.num_perm, seed=self._template.seed, hashfunc=zlib.crc32,
                          permutations=self._template.permutations, scheme=self._template.scheme)
        m.update_batch(shingles(conv))
        return m.hashvalues.astype(np.uint32)

    def _band_keys(self, sig: np.ndarray) -> list[int]:
        keys = []
        for b in range(self.bands):
            chunk = sig[b * self.rows : (b + 1) * self.rows].tobytes()
            digest = hashlib.blake2b(chunk, digest_size=8, person=b.to_bytes(2, "little")).digest()
            keys.append(int.from_bytes(digest, "little", signed=True))
        return keys

    def _near_match(self, sig: np.ndarray, band_keys: list[int]) -> tuple[str, float] | None:
        marks = ",".join("?" * len(band_keys))
        rows = self.db.execute(
            f"SELECT sigs.sig, sigs.origin FROM sigs WHERE id IN (SELECT id FROM bands WHERE key IN ({marks})) "
            "ORDER BY id", band_keys).fetchall()
        for blob, origin in rows:
            # LSH only proposes candidates; the signatures' agreement estimates the Jaccard similarity.
            similarity = float(np.mean(np.frombuffer(blob, dtype=np.uint32) == sig))
            if similarity >= self.cfg.threshold:
                return origin, similarity
        return None

    def _remember(self, origin: str, key: bytes | None, sig: np.ndarray | None, band_keys: list[int] | None):
        if key is not None:
            self.db.execute("INSERT INTO exact VALUES (?, ?)", (key, origin))
        if sig is not None:
            cur = self.db.execute("INSERT INTO sigs (sig, origin) VALUES (?, ?)", (sig.tobytes(), origin))
            self.db.executemany("INSERT OR IGNORE INTO bands VALUES (?, ?)",
                                [(k, cur.lastrowid) for k in band_keys])
        self._pending += 1
        if self._pending >= 10_000:
            self.db.commit()
            self._pending = 0
