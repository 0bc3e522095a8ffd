"""Seeded, streaming split assignment (finetune/data/split.py)."""

from collections import Counter

import pytest

from finetune.data.split import ExactSplitter, GroupSplitter, exact_counts

RATIOS = {"train": 0.8, "validation": 0.1, "test": 0.1}


@pytest.mark.parametrize("n, expected", [
    (100, {"train": 80, "validation": 10, "test": 10}),
    (474, {"train": 379, "validation": 48, "test": 47}),
    (12, {"train": 10, "validation": 1, "test": 1}),
    (1, {"train": 1, "validation": 0, "test": 0}),
    (0, {"train": 0, "validation": 0, "test": 0}),
])
def test_exact_counts_sum_to_n(n, expected):
    assert exact_counts(n, RATIOS) == expected


def test_exact_splitter_hits_the_counts_and_is_seeded():
    def run(seed):
        s = ExactSplitter(474, RATIOS, seed)
        return [s.assign() for _ in range(474)]

    a = run(42)
    assert Counter(a) == Counter(exact_counts(474, RATIOS))
    assert a == run(42)
    assert a != run(43)
    with pytest.raises(RuntimeError, match="more conversations than counted"):
        s = ExactSplitter(1, RATIOS, 0)
        s.assign()
        s.assign()


def test_exact_splitter_is_not_biased_by_position():
    s = ExactSplitter(10_000, {"train": 0.5, "test": 0.5}, seed=0)
    first_half = [s.assign() for _ in range(5_000)]
    assert 0.45 < first_half.count("train") / 5_000 < 0.55


def test_group_splitter_keeps_a_group_together_and_follows_ratios_on_average():
    s = GroupSplitter(RATIOS, seed=7)
    assert len({s.assign("tree-1") for _ in range(10)}) == 1
    counts = Counter(s.assign(f"tree-{i}") for i in range(5_000))
    assert 0.77 < counts["train"] / 5_000 < 0.83
    assert GroupSplitter(RATIOS, seed=7).assign({"k": 1}) == s.assign({"k": 1})


def test_group_splitter_without_test_split():
    s = GroupSplitter({"train": 0.9, "validation": 0.1}, seed=0)
    assert {s.assign(i) for i in range(500)} == {"train", "validation"}
