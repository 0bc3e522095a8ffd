"""The inference and roofline benchmarks run on a tiny model and write well-formed results (no timing asserted).

pytest tests/benchmarks/test_infer_roofline.py
"""

import json

import pytest

from benchmarks import infer, machine, roofline

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_infer_writes_one_row_per_path_batch_and_prompt(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(machine, "RESULTS", tmp_path)
    monkeypatch.setattr(infer, "memory_read_gbps", lambda: 10.0)
    assert infer.main(["--model", str(tiny_model_dir), "--paths", "hf-fp32,hf-bf16,ov-int8,llamacpp",
                       "--batches", "1,2", "--prompts", "16", "--new-tokens", "6"]) == 0
    payload = json.loads((tmp_path / "infer-latest.json").read_text())
    rows = payload["results"]
    assert {(r["path"], r["batch"]) for r in rows} == {(p, b) for p in ("hf-fp32", "hf-bf16", "ov-int8")
                                                       for b in (1, 2)}
    for r in rows:
        assert r["ttft_ms"] > 0 and r["decode_tokens_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["p50_token_ms"] <= r["p99_token_ms"]
        assert (r["batch"] == 1) == ("fraction_of_decode_limit" in r)
    # The llamacpp path cannot run here (llama-cpp-python is not a dependency; where it is built, the tiny model
    # has no GGUF file): it is reported as not measured, with the reason
    import importlib.util

    reason = ("embedded model's GGUF file only" if importlib.util.find_spec("llama_cpp")
              else "llama-cpp-python")
    assert reason in payload["errors"]["llamacpp"]
    assert "| ov-int8 | 1 |" in capsys.readouterr().out


def test_roofline_verifies_amx_and_computes_limits(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "RESULTS", tmp_path)
    monkeypatch.setattr(roofline, "matmul_gflops", lambda dtype, **kw: {"bf16": 800.0, "fp32": 160.0}[dtype])
    monkeypatch.setattr(roofline, "memory_read_gbps", lambda: 20.0)
    assert roofline.main(["--model", str(tiny_model_dir)]) == 0
    payload = json.loads((tmp_path / "roofline-latest.json").read_text())
    params = payload["parameters"]
    assert payload["limits"]["train_lora_tokens_per_s"] == pytest.approx(800e9 / (4 * params))
    assert payload["limits"]["decode_tokens_per_s"]["bf16"] == pytest.approx(20e9 / (2 * params))
    hw = payload["machine"]["hardware"]
    if hw["amx_bf16"]:
        assert payload["amx_in_use"] and "amx" in payload["onednn_bf16_kernel"]
