"""The training benchmark runs on a tiny model and writes well-formed results (no timing is asserted).

pytest tests/benchmarks/test_train_benchmark.py
"""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import machine, train
from finetune import allocator
from finetune.hardware import usable_cores

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_train_benchmark_writes_json_and_table(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(machine, "RESULTS", tmp_path)
    monkeypatch.setattr(machine, "matmul_gflops", lambda dtype, **kw: 100.0)
    assert train.main(["--model", str(tiny_model_dir), "--steps", "2", "--warmup", "1", "--examples", "24",
                       "--eval-examples", "4", "--variants", "plain-fp32,ours,ours-glibc"]) == 0
    payload = json.loads((tmp_path / "train-latest.json").read_text())
    rows = {r["variant"]: r for r in payload["results"]}
    assert set(rows) == {"plain-fp32", "ours", "ours-glibc"}
    # the limit at the model's own shapes: the same 4 x parameters FLOPs per token at their measured GFLOPS
    shapes, params = payload["model_shape_gflops"], rows["ours"]["parameters"]
    assert payload["train_precision"] == machine.train_precision()
    assert shapes > 0
    assert payload["model_shape_limit_tokens_per_s"] == pytest.approx(shapes * 1e9 / (4 * params))
    for r in rows.values():
        assert r["timed_steps"] == 2 and r["tokens"] >= r["useful_tokens"] > 0 and r["peak_rss_mb"] > 0
        assert r["eval_loss"] > 0 and 0 < r["fraction_of_limit"]
        assert r["fraction_of_model_shape_limit"] == pytest.approx(
            r["useful_tokens_per_s"] / payload["model_shape_limit_tokens_per_s"])
    assert rows["ours"]["tokens"] == rows["ours"]["useful_tokens"]  # no padding in our batches
    assert rows["plain-fp32"]["useful_tokens"] == rows["ours"]["useful_tokens"]  # the same examples
    assert rows["ours-glibc"]["useful_tokens"] == rows["ours"]["useful_tokens"]  # the same recipe
    assert rows["ours-glibc"]["allocator"] == "glibc"
    if allocator.find_allocator():
        assert rows["ours"]["allocator"] in ("tcmalloc", "jemalloc")
    assert payload["machine"]["hardware"]["usable_cores"] >= 1
    out = capsys.readouterr().out
    assert "| ours |" in out and "| ours-glibc | glibc |" in out
    assert "| of shape limit |" in out and "-> shape limit" in out
    assert list(tmp_path.glob("train-2*.md"))


def test_ours_glibc_drops_an_inherited_allocator_preload():
    env = {"LD_PRELOAD": "/x/libtcmalloc_minimal.so.4 /y/other.so:/z/libjemalloc.so.2", "A": "1"}
    glibc = train._variant_env("ours-glibc", env)
    assert glibc["LD_PRELOAD"] == "/y/other.so" and glibc["NEURALCHAT_ALLOCATOR"] == "system"
    assert glibc["A"] == "1" and env["LD_PRELOAD"].startswith("/x/")  # the caller's env is left as it was
    assert "LD_PRELOAD" not in train._variant_env("ours-glibc", {"LD_PRELOAD": "/x/libjemalloc.so.2"})
    assert train._variant_env("plain-fp32", env) == env
    path = allocator.find_allocator()
    if path is None:
        pytest.skip("no tcmalloc/jemalloc on this machine: nothing to preload or to drop")
    assert path in train._variant_env("ours", {})["LD_PRELOAD"]
    # a parent that itself runs on the allocator (LD_PRELOAD set) still starts ours-glibc on glibc malloc
    code = "from finetune.allocator import loaded_allocator; print(loaded_allocator())"
    child_env = train._variant_env("ours-glibc", allocator.allocator_env({**os.environ}))
    out = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "None"


def test_chat_dataset_has_varied_lengths():
    rows = train.chat_dataset(200, seed=0)
    turns = {len(r["messages"]) for r in rows}
    assert len(turns) >= 5 and train.chat_dataset(200, seed=0) == rows


def test_sweeps_vary_one_setting_each_including_full_and_ddp(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(machine, "RESULTS", tmp_path)
    monkeypatch.setattr(machine, "matmul_gflops", lambda dtype, **kw: 100.0)
    # measured for real in test_train_benchmark_writes_json_and_table; here only how the sweep uses it
    monkeypatch.setattr(train, "model_shape_gflops", lambda *a, **kw: 50.0)
    assert train.main(["--model", str(tiny_model_dir), "--steps", "2", "--warmup", "1", "--examples", "24",
                       "--eval-examples", "4", "--sweep", "lora_rank=4", "--sweep", "method=full",
                       "--sweep", "processes=2", "--sweep", "threads=1"]) == 0
    payload = json.loads((tmp_path / "train-sweep-latest.json").read_text())
    points = [(r["sweep"], r["value"], r["variant"]) for r in payload["results"]]
    assert points == [("lora_rank", 4, "ours"), ("method", "full", "ours"), ("processes", 2, "ours"),
                      ("threads", 1, "ours")]
    rows = payload["results"]
    assert all(r["useful_tokens_per_s"] > 0 and r["eval_loss"] > 0 for r in rows)
    # full fine-tuning is measured against its own limit (6 x parameters FLOPs per token, not 4), at the 4096^3
    # peak and at the model's own shapes alike
    assert rows[1]["limit_tokens_per_s"] == pytest.approx(rows[0]["limit_tokens_per_s"] * 4 / 6)
    assert rows[1]["model_shape_limit_tokens_per_s"] == pytest.approx(rows[0]["model_shape_limit_tokens_per_s"] * 4 / 6)
    assert payload["model_shape_gflops"] > 0
    for r in rows:
        assert r["fraction_of_model_shape_limit"] == pytest.approx(
            r["useful_tokens_per_s"] / r["model_shape_limit_tokens_per_s"])
    ddp = rows[2]
    assert ddp["processes"] == 2 and ddp["threads"] == max(1, usable_cores() // 2)  # each rank its share
    per_rank = ddp["useful_tokens_per_rank"]
    assert len(per_rank) == 2 and min(per_rank) > 0 and ddp["useful_tokens"] == sum(per_rank)
    assert rows[3]["threads"] == 1
    out = capsys.readouterr().out
    assert "| lora_rank | 4 | ours |" in out and "of shape limit" in out


def test_a_bad_sweep_says_what_is_accepted():
    with pytest.raises(SystemExit, match="NAME one of lora_rank, seq_len"):
        train.parse_sweep("rank=4")
    with pytest.raises(SystemExit, match="method is lora or full"):
        train.parse_sweep("method=qlora")
    assert train.parse_sweep("seq-len=128, 256") == ("seq_len", [128, 256])


def test_the_gpu_recipes_run_through_the_same_code_on_cpu(tiny_model_dir, tmp_path, monkeypatch):
    """No GPU here: the QLoRA variant (4-bit NF4 base, the recipe --device cuda is for) and the fp16 generate path
    run on the CPU through the benchmark code a GPU host runs, and write the same schema."""
    from benchmarks import infer

    monkeypatch.setattr(machine, "RESULTS", tmp_path)
    monkeypatch.setattr(machine, "matmul_gflops", lambda dtype, **kw: 100.0)
    monkeypatch.setattr(train, "model_shape_gflops", lambda *a, **kw: 50.0)
    assert train.main(["--model", str(tiny_model_dir), "--steps", "2", "--warmup", "1", "--examples", "24",
                       "--eval-examples", "4", "--variants", "ours-qlora"]) == 0
    (row,) = json.loads((tmp_path / "train-latest.json").read_text())["results"]
    assert row["variant"] == "ours-qlora" and row["timed_steps"] == 2 and row["useful_tokens_per_s"] > 0
    assert row["eval_loss"] > 0 and row["peak_rss_mb"] > 0

    monkeypatch.setattr(infer, "memory_read_gbps", lambda: 10.0)
    assert infer.main(["--model", str(tiny_model_dir), "--paths", "hf-fp16", "--batches", "1", "--prompts", "8",
                       "--new-tokens", "4", "--repeats", "1"]) == 0
    payload = json.loads((tmp_path / "infer-latest.json").read_text())
    assert not payload["errors"]
    (row,) = payload["results"]
    assert row["path"] == "hf-fp16" and row["decode_tokens_per_s"] > 0 and row["device"] == "cpu"


@pytest.mark.parametrize("after", [50.0, 400.0])
def test_the_faster_of_two_limit_measurements_counts(monkeypatch, after):
    # A shared host can be busy while the limit is measured: a slow measurement would overstate every fraction.
    payload = {"train_precision": "bf16", "matmul_gflops": {"bf16": 200.0, "fp32": 40.0}, "model_shape_gflops": 150.0}
    monkeypatch.setattr(train, "_measure_limits",
                        lambda args, precision: ({"bf16": after, "fp32": after / 5}, {}, after * 0.75))
    train._remeasure_limits(payload, None)
    assert payload["matmul_gflops"] == {"bf16": max(200.0, after), "fp32": max(40.0, after / 5)}
    assert payload["model_shape_gflops"] == max(150.0, after * 0.75)
    first, second = payload["limits_measured"]
    assert first["model_shape_gflops"] == 150.0 and second["model_shape_gflops"] == after * 0.75
