"""benchmarks/serve_load.py against the tiny model: bounded levels, JSON fields, loopback-only guard.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/neural_chat_app/test_serve_load.py
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from benchmarks import serve_load


def test_levels_report_tokens_and_percentiles(make_server, tmp_path):
    server = make_server(chat_log={"enabled": False, "path": str(tmp_path / "x.db")})
    model = server.state.models.active.model_id
    deadline = time.monotonic() + 300
    levels = [serve_load.run_level(server.url, model, c, 2 * c, 8, deadline) for c in (1, 2)]
    for level in levels:
        assert level["requests"] == level["requests_planned"]
        assert 0 < level["completion_tokens"] <= 8 * level["requests"]
        assert level["latency_p50_s"] <= level["latency_p99_s"]
    report = {"model": model, "backend": "torch", "max_tokens": 8, "levels": levels}
    table = serve_load.render_table(json.loads(json.dumps(report)))
    assert table.count("\n| ") == 3  # header row plus one row per level


def test_follow_up_turns_resend_the_conversation_and_are_reported_apart(make_server, tmp_path):
    server = make_server(chat_log={"enabled": False, "path": str(tmp_path / "x.db")})
    model = server.state.models.active.model_id
    level = serve_load.run_level(server.url, model, 2, 2, 6, time.monotonic() + 300, turns=3)
    assert level["requests"] == level["requests_planned"] == 6
    assert level["followup_ttft_p50_s"] <= level["followup_ttft_p99_s"]
    first = serve_load.one_request(server.url, model, [{"role": "user", "content": "(conversation 2.0) x"}], 6)
    assert level["followup_prompt_tokens_mean"] > first["prompt_tokens"]  # the history went along
    report = {"model": model, "backend": "torch", "max_tokens": 6, "levels": [level]}
    assert "follow-up p50 TTFT" in serve_load.render_table(report)


def test_percentile_nearest_rank():
    assert serve_load.percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert serve_load.percentile([1.0, 2.0, 3.0], 99) == 3.0


def test_refuses_non_loopback_url():
    with pytest.raises(SystemExit):
        serve_load.main(["--url", "http://192.0.2.1:8000"])


def test_each_level_is_reported_beside_its_bandwidth_limit(make_server, tmp_path, monkeypatch):
    from benchmarks import machine

    server = make_server(chat_log={"enabled": False, "path": str(tmp_path / "x.db")})
    backend = server.state.models.active
    # parameters (tied ones once), and the linear weights that loading reordered for oneDNN (buffers now; a copy of
    # the tied head stands in for the embedding table, counted once)
    from neural_chat_app.prepacked import PrepackedLinear

    width = backend.model.get_input_embeddings().weight.element_size()
    weights = sum(p.numel() * p.element_size() for p in backend.model.parameters()) + sum(
        m.in_features * m.out_features * width for m in backend.model.modules()
        if isinstance(m, PrepackedLinear) and not m.copied)
    assert httpx.get(server.url + "/health").json()["weight_bytes"] == weights  # the tiny model's, tied ones once
    monkeypatch.setattr(machine, "memory_read_gbps", lambda: 0.01)  # 10 MB/s: the tiny model's limit in the tens
    assert serve_load.main(["--url", server.url, "--concurrency", "1,2", "--max-tokens", "4",
                            "--output-dir", str(tmp_path / "out")]) == 0
    (saved,) = (tmp_path / "out").glob("serve_load-*.json")
    report = json.loads(saved.read_text())
    assert report["weight_bytes"] == weights and report["memory_read_gbps"] == 0.01
    for level in report["levels"]:
        # c streams read the weights once per step for c tokens
        assert level["decode_limit_tokens_per_s"] == pytest.approx(level["concurrency"] * 0.01e9 / weights)
        limit = level["decode_limit_tokens_per_s"]
        assert level["fraction_of_decode_limit"] == pytest.approx(level["tokens_per_s"] / limit)
    assert "| of bandwidth limit |" in serve_load.render_table(report)


def test_failed_requests_are_counted_with_the_server_s_reason(make_server, tmp_path):
    server = make_server(chat_log={"enabled": False, "path": str(tmp_path / "x.db")})
    level = serve_load.run_level(server.url, "no-such-model", 2, 2, 4, time.monotonic() + 300)
    assert level["errors"] == 2 and level["requests"] == 0 and level["completion_tokens"] == 0
    assert "HTTP 404" in level["error_examples"][0] and "no-such-model" in level["error_examples"][0]
    assert "HTTP 404" in level["warmup_error"]
    table = serve_load.render_table({"model": "x", "backend": "torch", "max_tokens": 4, "levels": [level]})
    assert "| 2 | 0 | 2 |" in table and "2 streams, failed: RequestFailed: HTTP 404" in table
