"""Exact and near-duplicate removal, first occurrence kept (finetune/data/dedup.py)."""

import random

import pytest

from finetune.data.config import DedupConfig
from finetune.data.dedup import Deduplicator
from finetune.data.records import Conversation

WORDS = [f"w{i}" for i in range(3000)]


def _dir(root, name):
    (root / name).mkdir()
    return root / name


def conv(answer, origin, question="What do you think?"):
    return Conversation([{"role": "user", "content": question}, {"role": "assistant", "content": answer}], {}, origin)


def text(rng, n=120):
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture
def dedup(tmp_path):
    d = Deduplicator(DedupConfig(), tmp_path, seed=42)
    yield d
    d.close()


def test_exact_duplicate_ignores_case_and_whitespace(dedup):
    assert dedup.check(conv("Hello   World", "a:1")) is None
    assert dedup.check(conv("hello world", "a:2")) == ("exact", "same normalized text as a:1")


def test_near_duplicate_is_found_and_names_the_first(dedup):
    rng = random.Random(0)
    base = text(rng)
    assert dedup.check(conv(base, "a:1")) is None
    code, detail = dedup.check(conv(base + " one more", "a:2"))
    assert code == "near" and detail.endswith("with a:1")


def test_different_conversations_are_all_kept(dedup):
    rng = random.Random(1)
    assert all(dedup.check(conv(text(rng), f"a:{i}")) is None for i in range(200))


def test_a_shared_system_prompt_does_not_make_conversations_alike(dedup):
    rng = random.Random(2)
    system = {"role": "system", "content": text(rng, 400)}
    for i in range(20):
        c = conv(f"short distinct answer {i} " + text(rng, 10), f"a:{i}")
        c.messages.insert(0, system)
        assert dedup.check(c) is None


def test_threshold_is_configurable(tmp_path):
    rng = random.Random(3)
    base = text(rng, 100)
    half_changed = base.split()[:60] + text(rng, 40).split()
    loose = Deduplicator(DedupConfig(threshold=0.3, exact=False), _dir(tmp_path, "a"), seed=1)
    strict = Deduplicator(DedupConfig(threshold=0.95, exact=False), _dir(tmp_path, "b"), seed=1)
    for d in (loose, strict):
        assert d.check(conv(base, "a:1")) is None
    assert loose.check(conv(" ".join(half_changed), "a:2"))[0] == "near"
    assert strict.check(conv(" ".join(half_changed), "a:2")) is None


def test_only_exact_or_only_near(tmp_path):
    exact_only = Deduplicator(DedupConfig(near=False), _dir(tmp_path, "a"), seed=1)
    rng = random.Random(4)
    base = text(rng)
    assert exact_only.check(conv(base, "a:1")) is None
    assert exact_only.check(conv(base + " more", "a:2")) is None
    near_only = Deduplicator(DedupConfig(exact=False), _dir(tmp_path, "b"), seed=1)
    assert near_only.check(conv(base, "a:1")) is None
    assert near_only.check(conv(base, "a:2"))[0] == "near"


def test_lookups_stay_sub_quadratic(dedup):
    """LSH proposes only the few candidates that share a band; n distinct items compare far fewer than n^2 pairs."""
    rng = random.Random(5)
    n = 400
    for i in range(n):
        dedup.check(conv(text(rng, 60), f"a:{i}"))
    assert dedup.index.candidates_checked < n  # a quadratic scan would be n*(n-1)/2 = 79800


def _datasketch_signature(words, seed=42, num_perm=128):
    """The signature as the pipeline computed it before minhash.py: datasketch fed each shingle's bytes."""
    import zlib

    from datasketch import MinHash

    from finetune.data.minhash import shingles

    m = MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)
    m.update_batch(shingles(words))
    return m.hashvalues


def test_signatures_are_datasketchs_bit_for_bit():
    import numpy as np

    from finetune.data.dedup import lsh_parameters
    from finetune.data.minhash import MinHasher, shingle_words

    hasher = MinHasher(*lsh_parameters(DedupConfig(), 42))
    rng = random.Random(7)
    texts = ["", "one", "two words", "exactly three words", "x" * 300 + " after a long word and more",
             "Grüße aus Köln: naïve CAFÉ, ß and ﬁ ligatures", "長い文章 日本語 テキスト 三つ以上",
             "punctuation, don't split-hyphens; snake_case and 3.14 numbers!"]
    texts += [" ".join(rng.choice(WORDS + ["É", "ñu", "o'k", "a-b"]) for _ in range(rng.randint(1, 200)))
              for _ in range(200)]
    for t in texts:
        messages = [{"role": "system", "content": "ignored " * 9}, {"role": "user", "content": t}]
        words = shingle_words(messages)
        assert np.array_equal(hasher.signature(words), _datasketch_signature(words)), t


def test_shared_rows_are_the_rows_with_a_repeated_key():
    """decide matches only the conversations that share a key within the batch (or have a candidate from before)."""
    import numpy as np

    from finetune.data.dedup import _shared_exact, _shared_rows

    rng = np.random.default_rng(19)
    for _ in range(50):
        bands = rng.integers(0, 40, size=(int(rng.integers(0, 12)), 3))
        flat = bands.reshape(-1).tolist()
        expected = [any(flat.count(k) > 1 for k in row) for row in bands.tolist()]
        assert _shared_rows(bands).tolist() == expected
    assert _shared_exact([b"a", b"b", b"a", b"c", b"c", b"c"]) == {b"a", b"c"}


def test_squeezed_is_split_and_join():
    """The exact key's whitespace folding skips the split for printable text without double spaces; it equals
    " ".join(text.split()) for every kind of whitespace, control characters and lone surrogates included."""
    from finetune.data.dedup import _squeezed

    rng = random.Random(18)
    spaces = [c for c in map(chr, range(0x3001)) if c.isspace()]
    alphabet = ["a", "B", "é", " ", "  ", "\u200b", "\x00", "\ud800", "語", *spaces]
    for _ in range(20000):
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert _squeezed(t) == " ".join(t.split()), repr(t)


def test_ascii_words_are_the_regexs():
    import re

    from finetune.data.minhash import shingle_words

    rng = random.Random(8)
    for _ in range(300):
        t = "".join(rng.choice("aZ9_ .,;:!?'\"-\t\n()[]{}<>@#$%^&*+=/\\|~`") for _ in range(rng.randint(0, 80)))
        assert shingle_words([{"role": "user", "content": t}]) == re.findall(r"\w+", t.casefold())


def test_a_fingerprint_collision_is_no_duplicate(tmp_path, monkeypatch):
    """Memory holds 32-bit fingerprints; candidates are confirmed with the full keys from disk."""
    import numpy as np

    from finetune.data import dedup as dedup_module

    original = dedup_module._FingerprintRuns.lookup

    def every_entry(self, fps):  # as if every fingerprint collided with every stored one
        where, ids = original(self, fps)
        stored = [int(r) & 0xFFFFFFFF for r in self.entries()]
        extra_where = np.repeat(np.arange(len(fps)), len(stored))
        extra_ids = np.tile(np.array(stored, dtype=np.uint64), len(fps))
        return np.concatenate([where, extra_where]), np.concatenate([ids, extra_ids])

    monkeypatch.setattr(dedup_module._FingerprintRuns, "lookup", every_entry)
    d = Deduplicator(DedupConfig(), tmp_path, seed=1)
    rng = random.Random(9)
    texts = [text(rng) for _ in range(50)]
    assert all(d.check(conv(t, f"a:{i}")) is None for i, t in enumerate(texts))
    assert d.check(conv(texts[3], "b:1")) == ("exact", "same normalized text as a:3")
    assert d.check(conv(texts[5] + " extra", "b:2"))[1].endswith("with a:5")


def test_batches_decide_like_one_at_a_time(tmp_path):
    """The pipeline decides a chunk at a time; within a batch a duplicate of a kept one is found, and a duplicate
    of a rejected duplicate is judged against what was kept."""
    from finetune.data.dedup import DedupIndex, KeyMaker, lsh_parameters

    rng = random.Random(10)
    base = [text(rng) for _ in range(30)]
    convs = [conv(rng.choice(base) + (" more" * rng.randint(0, 2)), f"a:{i}") for i in range(120)]
    one = Deduplicator(DedupConfig(), _dir(tmp_path, "one"), seed=3)
    expected = [one.check(c) for c in convs]
    lsh = lsh_parameters(DedupConfig(), 3)
    index, maker = DedupIndex(DedupConfig(), _dir(tmp_path, "batch"), lsh), KeyMaker(DedupConfig(), lsh)
    got = []
    for start in range(0, len(convs), 17):
        got += index.decide(maker.keys(convs[start : start + 17]))
    assert got == expected and sum(v is None for v in got) == 30


def test_a_batch_of_signatures_is_each_signature():
    import numpy as np

    from finetune.data.dedup import lsh_parameters
    from finetune.data.minhash import MinHasher

    hasher = MinHasher(*lsh_parameters(DedupConfig(), 5))
    rng = random.Random(16)
    lists = [[], ["one"], ["two", "words"], ["just", "three", "words"], ["y" * 400, "a", "b", "c"], ["a", "b", "c"]]
    lists += [[rng.choice(WORDS) for _ in range(rng.randint(0, 40))] for _ in range(100)]
    lists += [["z" * 253, "q", "z" * 254, "r"], ["é" * 130, "x", "y"]]
    rng.shuffle(lists)
    expected = np.array([hasher.signature(w) for w in lists])
    assert np.array_equal(hasher.signatures(lists), expected)
    assert hasher.signatures([]).shape == (0, 128)


def test_a_batch_of_conversations_is_each_conversation():
    """conversation_signatures finds the words of a whole batch at once: the signatures are those of each
    conversation's shingle_words, with non-ASCII text, system prompts, short and empty conversations, long words,
    a text holding the batch's word separator, and a vocabulary that starts over."""
    import numpy as np

    from finetune.data import minhash
    from finetune.data.dedup import lsh_parameters
    from finetune.data.minhash import MinHasher, shingle_words

    rng = random.Random(17)
    pieces = WORDS + ["É", "ñu", "Grüße", "ﬁx", "日本語", "o'k", "a-b", "ABC", "x" * 300, "\t", "\n", "3.14", "_"]

    def message(role):
        return {"role": role, "content": " ".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))}

    batches = [[[message(rng.choice(["system", "user", "assistant"])) for _ in range(rng.randint(0, 4))]
                for _ in range(rng.randint(0, 40))] for _ in range(30)]
    batches.append([[{"role": "user", "content": f"one two three {minhash._SEP} four five"}], [message("user")]])
    batches.append([])
    hasher, reference = MinHasher(*lsh_parameters(DedupConfig(), 5)), MinHasher(*lsh_parameters(DedupConfig(), 5))
    for limit in (500_000, 40):  # 40: the vocabulary starts over within a batch
        minhash._VOCAB_LIMIT = limit
        try:
            for batch in batches:
                expected = reference.signatures([shingle_words(m) for m in batch])
                assert np.array_equal(hasher.conversation_signatures(batch), expected)
                assert hasher.conversation_signatures(batch).shape == (len(batch), 128)
        finally:
            minhash._VOCAB_LIMIT = 500_000


def test_band_keys_are_equal_exactly_when_the_rows_are():
    """The LSH keys decide which pairs are compared: equal band rows must give equal keys, different rows (and the
    same rows in another band) different ones, for a batch as for one signature."""
    import numpy as np

    from finetune.data.dedup import lsh_parameters
    from finetune.data.minhash import MinHasher

    hasher = MinHasher(*lsh_parameters(DedupConfig(), 5))  # 8 bands of 16 rows
    rng = np.random.default_rng(3)
    sigs = rng.integers(0, 2**32, size=(300, 128), dtype=np.uint32)
    sigs[100:200, :16] = sigs[:100, :16]  # band 0 shared with an earlier signature
    sigs[200:300, 16:32] = sigs[200:300, 32:48]  # bands 1 and 2: the same rows in two bands
    sigs[250:, 127] = sigs[250:, 127] ^ 1  # one bit apart from otherwise equal rows (band 7)
    keys = hasher.band_keys(sigs)
    assert keys.shape == (300, 8) and keys.dtype == np.int64
    assert np.array_equal(hasher.band_keys(sigs[7]), keys[7])
    rows = sigs.reshape(300, 8, 16)
    for band in range(8):
        same_rows = {tuple(r) for r in rows[:, band]}
        assert len(set(keys[:, band].tolist())) == len(same_rows)
    assert np.array_equal(keys[100:200, 0], keys[:100, 0])
    assert not np.intersect1d(keys[200:, 1], keys[200:, 2]).size


def test_keys_spilled_to_files_decide_as_in_memory(tmp_path, monkeypatch):
    """Past MEMORY_CAP entries the fingerprints go to files searched page by page: same verdicts as in memory."""
    from finetune.data import dedup as dedup_module

    rng = random.Random(12)
    base = [text(rng) for _ in range(150)]
    convs = [conv(rng.choice(base) + (" more" * rng.randint(0, 2)), f"a:{i}") for i in range(400)]
    in_memory = Deduplicator(DedupConfig(), _dir(tmp_path, "memory"), seed=4)
    expected = [in_memory.check(c) for c in convs]
    monkeypatch.setattr(dedup_module._FingerprintRuns, "MEMORY_CAP", 40)
    monkeypatch.setattr(dedup_module._FingerprintRuns, "PAGE", 4)  # many fingerprints span pages
    spilled = Deduplicator(DedupConfig(), _dir(tmp_path, "files"), seed=4)
    assert [spilled.check(c) for c in convs] == expected
    assert len(spilled.index._bands.files) > 10 and len(spilled.index._exact.files) >= 2
    assert 100 < sum(v is None for v in expected) <= 150 and any(v and v[0] == "near" for v in expected)
    spilled.close()
