"""The training benchmark runs on a tiny model and writes well-formed results (no timing is asserted).

pytest tests/benchmarks/test_train_benchmark.py
"""

import json

import pytest

from benchmarks import machine, train

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_train_benchmark_writes_json_and_table(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(machine, "RESULTS", tmp_path)
    monkeypatch.setattr(machine, "matmul_gflops", lambda dtype, **kw: 100.0)
    assert train.main(["--model", str(tiny_model_dir), "--steps", "2", "--warmup", "1", "--examples", "24",
                       "--eval-examples", "4", "--variants", "plain-fp32,ours"]) == 0
    payload = json.loads((tmp_path / "train-latest.json").read_text())
    rows = {r["variant"]: r for r in payload["results"]}
    assert set(rows) == {"plain-fp32", "ours"}
    for r in rows.values():
        assert r["timed_steps"] == 2 and r["tokens"] >= r["useful_tokens"] > 0 and r["peak_rss_mb"] > 0
        assert r["eval_loss"] > 0 and 0 < r["fraction_of_bf16_limit"]
    assert rows["ours"]["tokens"] == rows["ours"]["useful_tokens"]  # no padding in our batches
    assert rows["plain-fp32"]["useful_tokens"] == rows["ours"]["useful_tokens"]  # the same examples
    assert payload["machine"]["hardware"]["usable_cores"] >= 1
    assert "| ours |" in capsys.readouterr().out
    assert list(tmp_path.glob("train-2*.md"))


def test_chat_dataset_has_varied_lengths():
    rows = train.chat_dataset(200, seed=0)
    turns = {len(r["messages"]) for r in rows}
    assert len(turns) >= 5 and train.chat_dataset(200, seed=0) == rows
