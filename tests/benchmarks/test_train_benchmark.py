"""The training benchmark runs on a tiny model and writes well-formed results (no timing is asserted).

pytest tests/benchmarks/test_train_benchmark.py
"""

import json

import pytest

from benchmarks import machine, train
from finetune.hardware import usable_cores

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


def test_sweeps_vary_one_setting_each_including_full_and_ddp(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(machine, "RESULTS", tmp_path)
    monkeypatch.setattr(machine, "matmul_gflops", lambda dtype, **kw: 100.0)
    assert train.main(["--model", str(tiny_model_dir), "--steps", "2", "--warmup", "1", "--examples", "24",
                       "--eval-examples", "4", "--sweep", "lora_rank=4,8", "--sweep", "method=full",
                       "--sweep", "processes=2", "--sweep", "threads=1"]) == 0
    payload = json.loads((tmp_path / "train-sweep-latest.json").read_text())
    points = [(r["sweep"], r["value"], r["variant"]) for r in payload["results"]]
    assert points == [("lora_rank", 4, "ours"), ("lora_rank", 8, "ours"), ("method", "full", "ours"),
                      ("processes", 2, "ours"), ("threads", 1, "ours")]
    rows = payload["results"]
    assert all(r["useful_tokens_per_s"] > 0 and r["eval_loss"] > 0 for r in rows)
    # full fine-tuning is measured against its own limit (6 x parameters FLOPs per token, not 4)
    assert rows[2]["limit_tokens_per_s"] == pytest.approx(rows[0]["limit_tokens_per_s"] * 4 / 6)
    ddp = rows[3]
    assert ddp["processes"] == 2 and ddp["threads"] == max(1, usable_cores() // 2)  # each rank its share
    per_rank = ddp["useful_tokens_per_rank"]
    assert len(per_rank) == 2 and min(per_rank) > 0 and ddp["useful_tokens"] == sum(per_rank)
    assert rows[4]["threads"] == 1
    assert "| lora_rank | 4 | ours |" in capsys.readouterr().out


def test_a_bad_sweep_says_what_is_accepted():
    with pytest.raises(SystemExit, match="NAME one of lora_rank, seq_len"):
        train.parse_sweep("rank=4")
    with pytest.raises(SystemExit, match="method is lora or full"):
        train.parse_sweep("method=qlora")
    assert train.parse_sweep("seq-len=128, 256") == ("seq_len", [128, 256])
