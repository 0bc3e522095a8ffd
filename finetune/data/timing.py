"""Seconds per pipeline stage, measured inside the pipeline with one `perf_counter` call per stage boundary.

A `StageClock` is a stopwatch with laps: `lap("redact")` adds the time since the previous lap to `redact`. The
worker processes keep one each and send it back with every chunk; the parent adds them to its own, so a stage's
figure is the seconds spent in it summed over all processes (with N workers it can exceed the wall time).
"""

from __future__ import annotations

from time import perf_counter

STAGES = ("setup", "read", "normalize", "redact", "filters", "tokens", "exact_dedup", "near_dedup", "split", "write",
          "plot")
"""In pipeline order. setup: importing the optional libraries and drawing the MinHash permutations; read: reading
and parsing the input; write: rendering and writing the splits, rejects and staging files; plot: the token-length
PNG (mostly matplotlib's import). Fixed costs, setup and plot, matter only on small inputs."""


class StageClock:
    def __init__(self):
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.started = self._last = perf_counter()

    def lap(self, stage: str) -> None:
        """Charge the time since the previous lap (or `restart`) to `stage`."""
        now = perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now

    def restart(self) -> None:
        """Start the next lap now: the time since the previous lap belongs to no stage (e.g. waiting)."""
        self._last = perf_counter()

    def add(self, seconds: dict[str, float]) -> None:
        for stage, s in seconds.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + s

    def take(self) -> dict[str, float]:
        """The seconds so far, and zero them (a worker sends each chunk's own)."""
        out, self.seconds = self.seconds, dict.fromkeys(STAGES, 0.0)
        return out
