"""Stats bookkeeping: the accounting check, the histogram, stats.json (finetune/data/stats.py)."""

import json

import pytest

from finetune.data.records import Reject
from finetune.data.stats import EDGES, AccountingError, LengthHistogram, Stats, plot_histogram


def test_accounting_check_catches_a_lost_record():
    stats = Stats(unit="words")
    stats.records_read = 3
    stats.records_kept = 1
    stats.reject(Reject("filter", "min_turns", "d", "f:1"))
    with pytest.raises(AccountingError, match="records read 3 != kept/written 1 \\+ rejected 1"):
        stats.check_accounting(after_export=False)
    stats.reject(Reject("dedup", "near", "d", "f:2"))
    stats.check_accounting(after_export=False)
    stats.splits = {"train": {"conversations": 1, "examples": 2}}
    stats.check_accounting(after_export=True)
    assert stats.to_dict()["duplicates_removed"] == {"exact": 0, "near": 1}
    assert stats.to_dict()["rejected_by_reason"] == {"dedup.near": 1, "filter.min_turns": 1}


def test_histogram_bins_and_summary(tmp_path):
    hist = LengthHistogram("tokens")
    for n in (0, 31, 32, 100, 100_000):
        hist.add(n)
    d = hist.to_dict()
    assert d["counts"][0] == 2 and d["counts"][1] == 1 and d["counts"][EDGES.index(64)] == 1
    assert d["counts"][-1] == 1 and d["bin_edges"][-1] == "inf"
    assert (d["min"], d["max"], d["mean"]) == (0, 100_000, round(100_163 / 5, 2))
    plot_histogram(hist, tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_stats_json_is_written(tmp_path):
    stats = Stats(unit="words")
    stats.redactions["email"] += 2
    stats.write(tmp_path / "stats.json")
    assert json.loads((tmp_path / "stats.json").read_text())["redactions"] == {"email": 2}
