"""Prometheus text exposition for the few series the server keeps; no client library needed."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    def __init__(self, buckets=LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        return out + [f'{name}_bucket{{le="+Inf"}} {self.n}', f"{name}_sum {self.total:.6f}", f"{name}_count {self.n}"]


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cancelled = 0
        self.latency = Histogram()
        self.first_token = Histogram()

    def count_request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[(path, status)] += 1

    def count_generation(self, prompt_tokens: int, completion_tokens: int, total_s: float, first_s, cancelled: bool):
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.cancelled += int(cancelled)
            self.latency.observe(total_s)
            if first_s is not None:
                self.first_token.observe(first_s)

    def render(self, running: int, waiting: int, model: str) -> str:
        with self._lock:
            lines = ["# TYPE neuralchat_requests_total counter"]
            lines += [
                f'neuralchat_requests_total{{path="{p}",status="{s}"}} {n}'
                for (p, s), n in sorted(self.requests.items())
            ]
            lines += [
                "# TYPE neuralchat_prompt_tokens_total counter",
                f"neuralchat_prompt_tokens_total {self.prompt_tokens}",
                "# TYPE neuralchat_completion_tokens_total counter",
                f"neuralchat_completion_tokens_total {self.completion_tokens}",
                "# TYPE neuralchat_cancelled_generations_total counter",
                f"neuralchat_cancelled_generations_total {self.cancelled}",
                "# TYPE neuralchat_generation_seconds histogram",
                *self.latency.lines("neuralchat_generation_seconds"),
                "# TYPE neuralchat_time_to_first_token_seconds histogram",
                *self.first_token.lines("neuralchat_time_to_first_token_seconds"),
                "# TYPE neuralchat_running_requests gauge",
                f"neuralchat_running_requests {running}",
                "# TYPE neuralchat_queue_depth gauge",
                f"neuralchat_queue_depth {waiting}",
                "# TYPE neuralchat_model_info gauge",
                f'neuralchat_model_info{{model="{model}"}} 1',
            ]
        return "\n".join(lines) + "\n"
