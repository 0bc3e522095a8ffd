"""benchmarks/serve_load.py against the tiny model: bounded levels, JSON fields, loopback-only guard.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/neural_chat_app/test_serve_load.py
"""

from __future__ import annotations

import json
import time

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
