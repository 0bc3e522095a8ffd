"""Exact and near-duplicate removal, first occurrence kept (finetune/data/dedup.py)."""

import random

import pytest

from finetune.data.config import DedupConfig
from finetune.data.dedup import Deduplicator
from finetune.data.records import Conversation

WORDS = [f"w{i}" for i in range(3000)]


def conv(answer, origin, question="What do you think?"):
    return Conversation([{"role": "user", "content": question}, {"role": "assistant", "content": answer}], {}, origin)


def text(rng, n=120):
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture
def dedup(tmp_path):
    d = Deduplicator(DedupConfig(), tmp_path / "index.sqlite", seed=42)
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
    loose = Deduplicator(DedupConfig(threshold=0.3, exact=False), tmp_path / "a.sqlite", seed=1)
    strict = Deduplicator(DedupConfig(threshold=0.95, exact=False), tmp_path / "b.sqlite", seed=1)
    for d in (loose, strict):
        assert d.check(conv(base, "a:1")) is None
    assert loose.check(conv(" ".join(half_changed), "a:2"))[0] == "near"
    assert strict.check(conv(" ".join(half_changed), "a:2")) is None


def test_only_exact_or_only_near(tmp_path):
    exact_only = Deduplicator(DedupConfig(near=False), tmp_path / "a.sqlite", seed=1)
    rng = random.Random(4)
    base = text(rng)
    assert exact_only.check(conv(base, "a:1")) is None
    assert exact_only.check(conv(base + " more", "a:2")) is None
    near_only = Deduplicator(DedupConfig(exact=False), tmp_path / "b.sqlite", seed=1)
    assert near_only.check(conv(base, "a:1")) is None
    assert near_only.check(conv(base, "a:2"))[0] == "near"


def test_lookups_stay_sub_quadratic(dedup):
    """LSH proposes only the few candidates that share a band; n distinct items compare far fewer than n^2 pairs."""
    rng = random.Random(5)
    compared = 0
    original = dedup._near_match

    def counting(sig, keys):
        nonlocal compared
        rows = dedup.db.execute(f"SELECT count(DISTINCT id) FROM bands WHERE key IN ({','.join('?' * len(keys))})",
                                keys).fetchone()[0]
        compared += rows
        return original(sig, keys)

    dedup._near_match = counting
    n = 400
    for i in range(n):
        dedup.check(conv(text(rng, 60), f"a:{i}"))
    assert compared < n  # a quadratic scan would be n*(n-1)/2 = 79800
