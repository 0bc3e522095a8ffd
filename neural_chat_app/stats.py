"""The latency / throughput table NeuralChat appends to a stream when `return_stats=True`."""

from __future__ import annotations

from neural_chat_app.streaming import StreamResult


def stats_table(result: StreamResult) -> str:
    first_ms = (result.first_token_s or 0.0) * 1000
    next_ms = 1000 / result.decode_tokens_per_s if result.decode_tokens_per_s else 0.0
    throughput = result.completion_tokens / result.total_s if result.total_s > 0 else 0.0
    rows = [
        ("Input Tokens", result.prompt_tokens),
        ("Output Tokens", result.completion_tokens),
        ("Total Latency (s)", f"{result.total_s:.3f}"),
        ("First Token Latency (ms)", f"{first_ms:.1f}"),
        ("Average Next Token Latency (ms)", f"{next_ms:.1f}"),
        ("Throughput (tokens/s)", f"{throughput:.1f}"),
    ]
    lines = ["", "", "| Key | Value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)
