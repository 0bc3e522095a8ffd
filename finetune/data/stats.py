"""Counts of a run, written to stats.json, and the token-length histogram (numbers plus a PNG)."""

from __future__ import annotations

import bisect
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.data.records import Reject

# Fixed edges, so the histogram is built while streaming without knowing the longest conversation first.
EDGES = [0, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 8192, 16384, 32768]


class AccountingError(RuntimeError):
    """records read != records written + records rejected: a bug, never a user error."""


@dataclass
class LengthHistogram:
    unit: str
    counts: list[int] = field(default_factory=lambda: [0] * len(EDGES))
    total: int = 0
    n: int = 0
    low: int | None = None
    high: int | None = None

    def add(self, length: int) -> None:
        self.counts[bisect.bisect_right(EDGES, length) - 1] += 1
        self.total += length
        self.n += 1
        self.low = length if self.low is None else min(self.low, length)
        self.high = length if self.high is None else max(self.high, length)

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "bin_edges": EDGES + ["inf"],
            "counts": self.counts,
            "min": self.low,
            "max": self.high,
            "mean": round(self.total / self.n, 2) if self.n else None,
        }


@dataclass
class Stats:
    unit: str
    records_read: int = 0
    records_kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    redactions: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)
    files_skipped: list[str] = field(default_factory=list)
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    histogram: LengthHistogram = None

    def __post_init__(self):
        self.histogram = LengthHistogram(self.unit)

    def reject(self, r: Reject) -> None:
        self.rejected[r.reason] += 1

    @property
    def records_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def records_written(self) -> int:
        return sum(s["conversations"] for s in self.splits.values())

    def check_accounting(self, after_export: bool) -> None:
        kept = self.records_written if after_export else self.records_kept
        if self.records_read != kept + self.records_rejected:
            raise AccountingError(f"records read {self.records_read} != kept/written {kept} + rejected "
                                  f"{self.records_rejected}: a record was lost; please report this bug")

    def to_dict(self) -> dict[str, Any]:
        dups = {k.split(".", 1)[1]: v for k, v in self.rejected.items() if k.startswith("dedup.")}
        return {
            "records_read": self.records_read,
            "records_written": self.records_written,
            "records_rejected": self.records_rejected,
            "accounting_ok": self.records_read == self.records_written + self.records_rejected,
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "redactions": dict(sorted(self.redactions.items())),
            "duplicates_removed": {"exact": dups.get("exact", 0), "near": dups.get("near", 0)},
            "formats": dict(sorted(self.formats.items())),
            "length_histogram": self.histogram.to_dict(),
            "splits": self.splits,
            "files": self.files,
            "files_skipped": self.files_skipped,
            "warnings": self.warnings,
        }

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def plot_histogram(hist: LengthHistogram, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    labels = [f"{a}-{b}" for a, b in zip(EDGES, EDGES[1:])] + [f"{EDGES[-1]}+"]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(range(len(labels)), hist.counts)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_xlabel(f"conversation length ({hist.unit})")
    ax.set_ylabel("conversations kept")
    ax.set_title(f"{hist.n} conversations, mean {hist.to_dict()['mean']} {hist.unit}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
