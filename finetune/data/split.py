"""Seeded train/validation/test assignment that streams and keeps each group (conversation) in one split.

Without `group_by`, the count of each split is exact (largest remainder of ratio x N) and the assignment is
sequential random sampling (Knuth's Algorithm S): each conversation draws its split with probability
`remaining_in_split / remaining_overall`, so every assignment of the exact counts is equally likely and
nothing but the counters is held in memory. With `group_by`, a group's split comes from a seeded hash of its
key, so all its conversations land together wherever they are in the input; counts then follow the ratios
only on average. Preference records are grouped by prompt with exact counts of prompts (`FirstSeenGroupSplitter`:
the number of prompts is known after the first pass), so even a few dozen prompts give a non-empty test split.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from finetune.data.dedup import prompt_key
from finetune.data.records import Preference

SPLITS = ("train", "validation", "test")


def exact_counts(n: int, ratios: dict[str, float]) -> dict[str, int]:
    raw = {s: n * r for s, r in ratios.items()}
    counts = {s: int(v) for s, v in raw.items()}
    by_remainder = sorted(ratios, key=lambda s: (-(raw[s] - counts[s]), SPLITS.index(s)))
    for s in by_remainder[: n - sum(counts.values())]:
        counts[s] += 1
    return counts


class ExactSplitter:
    def __init__(self, n: int, ratios: dict[str, float], seed: int):
        self.left = exact_counts(n, ratios)
        self.rng = random.Random(seed)

    def assign(self, _key: Any = None) -> str:
        r = self.rng.random() * sum(self.left.values())
        for split, left in self.left.items():
            if r < left:
                self.left[split] -= 1
                return split
            r -= left
        raise RuntimeError("more conversations than counted: the staging file changed during the run")


class FirstSeenGroupSplitter:
    """Exact counts of groups, drawn as ExactSplitter draws conversations, each group when first seen; its later
    members follow it. Holds each group's key and split (a few dozen bytes per group) for the second pass."""

    def __init__(self, n_groups: int, ratios: dict[str, float], seed: int):
        self.exact = ExactSplitter(n_groups, ratios, seed)
        self.seen: dict[Any, str] = {}

    def assign(self, key: Any) -> str:
        split = self.seen.get(key)
        if split is None:
            split = self.seen[key] = self.exact.assign()
        return split


class GroupSplitter:
    def __init__(self, ratios: dict[str, float], seed: int):
        self.ratios, self.seed = ratios, seed

    def assign(self, key: Any) -> str:
        text = f"{self.seed}\x00{json.dumps(key, sort_keys=True, default=str)}"
        u = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64
        for split, ratio in self.ratios.items():
            if u < ratio:
                return split
            u -= ratio
        return next(s for s in reversed(SPLITS) if self.ratios.get(s))  # float rounding at the top end


def prompt_group(pref: Preference) -> int:
    """A preference record's split group, a 64-bit hash of its prompt (case and spacing aside). By prompt:
    held-out reward accuracy must come from prompts the model was not tuned on, so one prompt's pairs land in one
    split."""
    digest = hashlib.blake2b(prompt_key(pref).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")
