"""MinHash signatures of word 3-grams, every shingle of a conversation hashed at once with numpy.

The numbers are datasketch's: `MinHash(num_perm, seed, hashfunc=zlib.crc32, scheme="affine32")` fed each shingle
(the words joined by one space, UTF-8): crc32 of the shingle, MurmurHash3's 32-bit finalizer, `a * h + b mod 2^32`
per permutation, the minimum over the shingles. A test checks them bit for bit against datasketch, so duplicate
decisions do not change. What is faster is finding crc32 of each shingle: crc32 of a concatenation follows from
crc32 of its parts (zlib's crc32_combine: crc(AB) = crc(A) * x^(8 len B) mod P xor crc(B)), so each distinct word
is hashed once per process, and a shingle costs a few table lookups in numpy instead of a byte string built in
Python. The permutation parameters come from the parent, which draws them with datasketch from the seed.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import zlib

import numpy as np

SHINGLE = 3  # word 3-grams: short enough to catch rephrasings, long enough that common words don't match
_WORDS = re.compile(r"\w+")
# ASCII text: every character that \w does not match becomes a space, then str.split() gives re.findall(r"\w+").
_ASCII_NON_WORD = str.maketrans({c: " " for c in map(chr, range(128)) if not re.fullmatch(r"\w", c)})
# The same for a batch's words as bytes (UTF-8): ASCII word characters lower-cased, the rest of ASCII a space, except
# _SEP, which stays to mark where one conversation's words end; bytes of other characters stay as they are.
_SEP = "\x01"
_BATCH_TABLE = bytes(ord(c.lower()) if re.fullmatch(r"\w", c) else ord(_SEP) if c == _SEP else 32
                     for c in map(chr, range(128))) + bytes(range(128, 256))
_POLY = 0xEDB88320  # crc32's polynomial, bit-reversed as zlib uses it
_MAX_SHIFT = 256  # shift tables cover parts up to this many bytes; a longer word is hashed the slow way
_VOCAB_LIMIT = 500_000  # distinct words remembered per process before the cache starts over (memory bound)


def shingle_words(messages: list[dict[str, str]]) -> list[str]:
    """The case-folded words of the non-system messages. System prompts are left out: a long shared one would
    make unrelated conversations look alike."""
    text = _conversation_text(messages)
    if text.isascii():
        return text.translate(_ASCII_NON_WORD).lower().split()
    return _WORDS.findall(text.casefold())


def _conversation_text(messages: list[dict]) -> str:
    """The non-system messages' text, a reply's tool calls included: two conversations that call with other
    arguments are not near duplicates."""
    return " ".join(m["content"] + (" " + json.dumps([c.get("function") for c in m["tool_calls"]], ensure_ascii=False)
                                    if m.get("tool_calls") else "")
                    for m in messages if m["role"] != "system")


def batch_words(message_lists: list[list[dict[str, str]]]) -> list[str] | None:
    """`shingle_words` of every item of `message_lists` in one list, each item's words followed by `_SEP` (a word
    that no text has): one translation to lower-case words and one split for the whole batch instead of a string
    and a split per conversation. None when a text holds `_SEP` itself (then take each on its own)."""
    parts = []
    for messages in message_lists:
        text = _conversation_text(messages)
        parts.append(text if text.isascii() else " ".join(_WORDS.findall(text.casefold())))
    parts.append("")
    joined = f" {_SEP} ".join(parts)
    if joined.count(_SEP) != len(message_lists):
        return None
    # Other text is words joined by spaces already: its UTF-8 bytes >= 128 stay, and so does the split.
    return joined.encode("utf-8", "surrogatepass").translate(_BATCH_TABLE).decode("utf-8", "surrogatepass").split()


def shingles(words: list[str]) -> list[bytes]:
    """The shingles as byte strings, as datasketch is fed them (fewer than 3 words: the words, or one empty)."""
    if len(words) < SHINGLE:
        return [w.encode() for w in words] or [b""]
    return [" ".join(words[i : i + SHINGLE]).encode() for i in range(len(words) - SHINGLE + 1)]


@functools.cache
def _shift_tables() -> np.ndarray:
    """`T[n * 1024 + j * 256 + v]`: byte j (= v) of a crc's contribution after n more bytes, i.e. the bytes of
    `crc * x^(8n) mod P` split into four lookups (the map is linear over GF(2))."""
    crc_table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        crc_table[i] = c
    basis = np.zeros((_MAX_SHIFT, 32), dtype=np.uint32)  # where each of the 32 bits of a crc goes after n bytes
    basis[0] = np.uint32(1) << np.arange(32, dtype=np.uint32)
    for n in range(1, _MAX_SHIFT):  # one zero byte: the crc register's own update step
        prev = basis[n - 1]
        basis[n] = crc_table[prev & 0xFF] ^ (prev >> np.uint32(8))
    bits = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(bool)  # (256 values, 8 bits)
    tables = np.zeros((_MAX_SHIFT, 4, 256), dtype=np.uint32)
    for j in range(4):
        parts = np.where(bits[None, :, :], basis[:, None, 8 * j : 8 * j + 8], np.uint32(0))
        tables[:, j, :] = np.bitwise_xor.reduce(parts, axis=2)
    return tables.reshape(-1)


def _shift(tables: np.ndarray, crc: np.ndarray, n: np.ndarray) -> np.ndarray:
    base = n * 1024
    return (tables[base + (crc & 0xFF)] ^ tables[base + 256 + ((crc >> 8) & 0xFF)]
            ^ tables[base + 512 + ((crc >> 16) & 0xFF)] ^ tables[base + 768 + (crc >> 24)])


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


_MUL = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd: multiplying by it is a bijection mod 2^64


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection): every input bit reaches every output bit."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(33))
        h = h * np.uint64(0xFF51AFD7ED558CCD)
        h = h ^ (h >> np.uint64(33))
        h = h * np.uint64(0xC4CEB9FE1A85EC53)
        return h ^ (h >> np.uint64(33))


class MinHasher:
    """Signatures and LSH band keys of conversations, for one set of permutations (`a`, `b`: uint32, `num_perm`)."""

    def __init__(self, permutations: np.ndarray, bands: int, rows: int):
        self.a = np.ascontiguousarray(permutations[0], dtype=np.uint32)
        self.b = np.ascontiguousarray(permutations[1], dtype=np.uint32)
        self.bands, self.rows = bands, rows
        with np.errstate(over="ignore"):
            self._band_seeds = _fmix64(np.arange(1, bands + 1, dtype=np.uint64) * _MUL)
        self._tables = _shift_tables()
        self._index: dict[str, int] = {}
        self._crc = np.zeros(1024, dtype=np.uint32)  # crc32(word)
        self._crc_space = np.zeros(1024, dtype=np.uint32)  # crc32(word + " ")
        self._len = np.zeros(1024, dtype=np.int64)  # len(word.encode())

    def signature(self, words: list[str]) -> np.ndarray:
        """uint32[num_perm], equal to datasketch's hashvalues for `shingles(words)`."""
        return self._permuted_min(_fmix32(self._shingle_crcs(words)))

    def signatures(self, word_lists: list[list[str]]) -> np.ndarray:
        """uint32[n, num_perm]: `signature` of each word list, the shingle hashes of all of them computed at once
        (a few dozen numpy calls per batch instead of per conversation)."""
        flat = list(itertools.chain.from_iterable(word_lists))
        sizes = np.fromiter(map(len, word_lists), dtype=np.int64, count=len(word_lists))
        return self._signatures(self._word_indexes(flat), sizes, word_lists.__getitem__)

    def conversation_signatures(self, message_lists: list[list[dict[str, str]]]) -> np.ndarray:
        """`signatures([shingle_words(m) for m in message_lists])`, the words of the whole batch found at once
        (`batch_words`)."""
        if not message_lists:
            return np.empty((0, len(self.a)), dtype=np.uint32)
        words = batch_words(message_lists)
        if words is None:
            return self.signatures([shingle_words(m) for m in message_lists])
        idx = self._word_indexes(words)
        ends = np.flatnonzero(idx == self._index[_SEP])
        keep = np.ones(len(idx), dtype=bool)
        keep[ends] = False
        starts = np.concatenate([[0], ends[:-1] + 1])
        return self._signatures(idx[keep], ends - starts, lambda i: words[starts[i] : ends[i]])

    def _signatures(self, idx: np.ndarray, sizes: np.ndarray, words_of) -> np.ndarray:
        """`signature` of each of `len(sizes)` word lists: `idx` holds the word indexes of all of them in order,
        `sizes` how many each has, `words_of(i)` gives list i (for the few that take the slow path)."""
        out = np.empty((len(sizes), len(self.a)), dtype=np.uint32)
        long_enough = sizes >= SHINGLE
        batch = np.flatnonzero(long_enough)
        if len(batch) < len(sizes):
            idx = idx[np.repeat(long_enough, sizes)]
            sizes = sizes[batch]
        n = self._len[idx]
        ends = np.cumsum(sizes)
        # Shingle p of the concatenation starts at word p; it belongs to one list when p + 2 does too.
        valid = np.ones(max(len(idx) - SHINGLE + 1, 0), dtype=bool)
        for k in range(1, SHINGLE):
            cut = ends - k
            valid[cut[cut < len(valid)]] = False
        h = np.empty(0, dtype=np.uint32)
        if len(valid):
            two = _shift(self._tables, self._crc_space[idx[:-2]], np.minimum(n[1:-1] + 1, _MAX_SHIFT - 1)) \
                ^ self._crc_space[idx[1:-1]]
            h = _fmix32(_shift(self._tables, two, np.minimum(n[2:], _MAX_SHIFT - 1)) ^ self._crc[idx[2:]])[valid]
        long_word = np.add.reduceat(n >= _MAX_SHIFT - 1, ends - sizes) if len(batch) else np.zeros(0, bool)
        counts = sizes - (SHINGLE - 1)
        if len(batch):
            out[batch] = self._permuted_mins(h, counts)
        for i in batch[long_word > 0]:  # its shingles were cut short by the tables: hash them directly
            crcs = _fmix32(np.array([zlib.crc32(s) for s in shingles(words_of(i))], dtype=np.uint32))
            out[i] = self._permuted_min(crcs)
        for i in np.flatnonzero(~long_enough):
            out[i] = self.signature(words_of(i))
        return out

    def _permuted_min(self, h: np.ndarray) -> np.ndarray:
        phv = np.multiply.outer(h, self.a)
        phv += self.b
        return phv.min(axis=0)

    def _permuted_mins(self, h: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """uint32[len(counts), num_perm]: `_permuted_min` of each run of `counts` hashes in `h`, a block of
        whole runs (~8 MB of permuted values) at a time: a few numpy calls per block, not per conversation, into
        one buffer (a fresh 8 MB array per block cost a third more)."""
        out = np.empty((len(counts), len(self.a)), dtype=np.uint32)
        if not len(counts):
            return out
        ends = np.cumsum(counts)
        block = max(1, (2 << 20) // len(self.a))  # hashes per block
        buffer = np.empty(len(self.a) * (block + int(counts.max())), dtype=np.uint32)
        a, b = self.a[:, None], self.b[:, None]
        first = 0
        while first < len(counts):
            start = ends[first] - counts[first]
            last = max(first + 1, int(np.searchsorted(ends, start + block, "right")))
            # (permutation, hash): each conversation's hashes are contiguous in a row, where reduceat is fast
            run = h[start : ends[last - 1]]
            phv = buffer[: len(a) * len(run)].reshape(len(a), len(run))
            np.multiply(a, run, out=phv)
            phv += b
            out[first:last] = np.minimum.reduceat(phv, ends[first:last] - counts[first:last] - start, axis=1).T
            first = last
        return out

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """int64[n, bands]: one key per band of each signature (uint32[n, num_perm]; one signature: int64[bands]).

        A 64-bit hash of the band's rows, seeded by the band number, computed for every band of every signature
        at once: equal rows give equal keys, and different rows collide with odds of about 2^-64 (the keys only
        propose candidates; a duplicate is the signatures' agreement)."""
        one = sigs.ndim == 1
        rows = np.atleast_2d(sigs).astype(np.uint64)[:, : self.bands * self.rows]
        rows = rows.reshape(len(rows), self.bands, self.rows)
        h = np.broadcast_to(self._band_seeds, rows.shape[:2]).copy()
        with np.errstate(over="ignore"):
            for j in range(self.rows):
                h ^= rows[:, :, j]
                h *= _MUL
                h ^= h >> np.uint64(29)
            keys = _fmix64(h).view(np.int64)
        return keys[0] if one else keys

    def _shingle_crcs(self, words: list[str]) -> np.ndarray:
        if len(words) < SHINGLE:
            return np.array([zlib.crc32(s) for s in shingles(words)], dtype=np.uint32)
        idx = self._word_indexes(words)
        n = self._len[idx]
        if n.max() >= _MAX_SHIFT - 1:  # a word too long for the tables: hash its shingles directly
            return np.array([zlib.crc32(s) for s in shingles(words)], dtype=np.uint32)
        first, second, third = idx[:-2], idx[1:-1], idx[2:]
        # crc("w1 w2 w3") = shift(shift(crc("w1 "), len("w2 ")) ^ crc("w2 "), len("w3")) ^ crc("w3")
        two = _shift(self._tables, self._crc_space[first], n[1:-1] + 1) ^ self._crc_space[second]
        return _shift(self._tables, two, n[2:]) ^ self._crc[third]

    def _word_indexes(self, words: list[str]) -> np.ndarray:
        """int64[len(words)]: each word's row in the crc tables, a new word added (one pass over the known ones)."""
        index = self._index
        idx = np.fromiter(map(index.get, words, itertools.repeat(-1)), dtype=np.int64, count=len(words))
        new = np.flatnonzero(idx < 0)
        if not len(new):
            return idx
        if len(index) + len(new) > _VOCAB_LIMIT:
            index.clear()
            return self._word_indexes(words) if len(words) <= _VOCAB_LIMIT else self._add_all(words)
        for p in new.tolist():
            w = words[p]
            i = index.get(w)
            idx[p] = self._add_word(w) if i is None else i
        return idx

    def _add_all(self, words: list[str]) -> np.ndarray:
        for w in words:
            if w not in self._index:
                self._add_word(w)
        return np.fromiter(map(self._index.__getitem__, words), dtype=np.int64, count=len(words))

    def _add_word(self, word: str) -> int:
        i = len(self._index)
        if i == len(self._crc):
            self._crc = np.resize(self._crc, 2 * i)
            self._crc_space = np.resize(self._crc_space, 2 * i)
            self._len = np.resize(self._len, 2 * i)
        data = word.encode()
        self._crc[i] = zlib.crc32(data)
        self._crc_space[i] = zlib.crc32(data + b" ")
        self._len[i] = len(data)
        self._index[word] = i
        return i
