"""Seconds per pipeline stage, measured inside the pipeline at each stage boundary: wall time and CPU time.

A `StageClock` is a stopwatch with laps: `lap("redact")` adds the time since the previous lap to `redact`. The
worker processes keep one each and send it back with every chunk; the parent adds them to its own, so a stage's
figure is the seconds spent in it summed over all processes (with N workers it can exceed the wall time).
`seconds` is wall time; `cpu` is the process's own CPU time (`time.process_time`) over the same laps. On a
machine shared with other jobs a process waits for a core without its wall clock stopping, so only the CPU
seconds compare between runs (a before/after, one stage against another).
"""

from __future__ import annotations

from time import perf_counter, process_time

STAGES = ("setup", "read", "normalize", "redact", "filters", "tokens", "exact_dedup", "near_dedup", "split", "write",
          "plot")
"""In pipeline order. setup: importing the optional libraries and drawing the MinHash permutations; read: reading
and parsing the input; write: rendering and writing the splits, rejects and staging files; plot: the token-length
PNG (mostly matplotlib's import). Fixed costs, setup and plot, matter only on small inputs."""


class StageClock:
    def __init__(self):
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.cpu: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.started = self._last = perf_counter()
        self._last_cpu = process_time()

    def lap(self, stage: str) -> None:
        """Charge the time since the previous lap (or `restart`) to `stage`."""
        now, cpu = perf_counter(), process_time()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu - self._last_cpu
        self._last, self._last_cpu = now, cpu

    def restart(self) -> None:
        """Start the next lap now: the time since the previous lap belongs to no stage (e.g. waiting)."""
        self._last, self._last_cpu = perf_counter(), process_time()

    def add(self, seconds: dict[str, float], cpu: dict[str, float] | None = None) -> None:
        """Add another clock's `take()` (or wall seconds alone)."""
        for stage, s in seconds.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + s
        for stage, s in (cpu or {}).items():
            self.cpu[stage] = self.cpu.get(stage, 0.0) + s

    def take(self) -> tuple[dict[str, float], dict[str, float]]:
        """(wall, CPU) seconds so far, and zero them (a worker sends each chunk's own)."""
        out = self.seconds, self.cpu
        self.seconds, self.cpu = dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0.0)
        return out
