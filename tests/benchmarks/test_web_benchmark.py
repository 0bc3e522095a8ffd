"""`python -m benchmarks web` on the tiny llama's 4-bit web artifact in Debian's Chromium, 2 held-out examples: the
saved JSON has every figure (download per part equal to the files' bytes, cold and warm first answers, tokens/s and
latency in the browser and in Python, schema validity, the browser's time split) and the browser's greedy tokens
equal onnxruntime's. No timing is asserted beyond being measured.

Needs: apt-get install -y chromium; scripts/vendor_web.sh (scripts/setup.sh runs it).
Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q -m "" tests/benchmarks/test_web_benchmark.py
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP = bool(os.environ.get("NEURALCHAT_SKIP_BROWSER")) and CHROMIUM is None
pytest.importorskip("onnxruntime")


def test_download_parts_count_each_file_once():
    from benchmarks.web import download_sizes

    served = [("art/onnx/model_q4.onnx", 1000), ("art/config.json", 10), ("art/config.json", 10),
              ("art/page/vendor/ort-wasm-simd-threaded.wasm", 300), ("art/page/extract.js", 5)]
    sizes = download_sizes(served)
    assert sizes["parts"] == {"model": 1000, "tokenizer_and_config": 10, "runtime": 300, "page": 5}
    assert (sizes["total_bytes"], sizes["sent_bytes"], sizes["requests"]) == (1315, 1325, 5)


def test_decoding_rate_counts_the_tokens_after_the_first_and_the_split_is_per_token():
    from benchmarks.web import browser_split, decoding_summary

    results = [{"tokens": [1] * 11, "prompt_ids": [0] * 50, "ms": 1200.0, "first_token_ms": 200.0,
                "split_ms": {"prefill": 150.0, "forward": 800.0, "constraint": 20.0, "generate_other": 30.0},
                "forward_tokens": [50] + [1] * 10},
               {"tokens": [1] * 6, "prompt_ids": [0] * 50, "ms": 700.0, "first_token_ms": 200.0,
                "split_ms": {"prefill": 150.0, "forward": 400.0, "constraint": 10.0, "generate_other": 15.0},
                "forward_tokens": [50] + [1] * 5}]
    summary = decoding_summary(results)
    assert summary["tokens_per_s"] == pytest.approx(15 / 1.5) and summary["tokens"] == 17
    assert summary["latency_median_ms"] == 950.0 and summary["first_token_median_ms"] == 200.0
    split = browser_split(results)
    assert split["per_decoded_token_ms"] == {"forward": 80.0, "constraint": 2.0, "generate_other": 3.0}
    assert split["prefill_ms_per_prompt_token"] == 3.0 and split["kv_cache_reused"]
    results[1]["forward_tokens"] = [50, 51, 52]  # a whole-sequence forward every step: no cache
    assert not browser_split(results)["kv_cache_reused"]


@pytest.fixture(scope="module")
def web_artifact(tiny_model_dir, tmp_path_factory):
    from quantize import quantize_model

    return quantize_model(model=str(tiny_model_dir), output_dir=str(tmp_path_factory.mktemp("web")), backend="web",
                          bits=4, group_size=32, num_eval_prompts=2, eval_new_tokens=6)


@pytest.mark.integration
@pytest.mark.skipif(SKIP, reason="NEURALCHAT_SKIP_BROWSER is set and no chromium is installed")
def test_the_web_benchmark_saves_every_figure(web_artifact, tmp_path, monkeypatch, capsys):
    from benchmarks import machine, web

    assert CHROMIUM, "the browser benchmark needs a system chromium (apt-get install -y chromium)"
    monkeypatch.setattr(machine, "RESULTS", tmp_path)
    assert web.main([str(web_artifact), "--max-examples", "2", "--max-new-tokens", "24"]) == 0
    saved = json.loads((tmp_path / "web-latest.json").read_text())

    download, name = saved["download"], web_artifact.name
    assert download["files"] and set(download["parts"]) == {"model", "tokenizer_and_config", "runtime", "page"}
    for path, size in download["files"].items():
        assert size == (web_artifact.parent / path).stat().st_size > 0, path
    assert download["files"][f"{name}/onnx/model_q4.onnx"] == (web_artifact / "onnx" / "model_q4.onnx").stat().st_size
    assert download["parts"]["model"] == (web_artifact / "onnx" / "model_q4.onnx").stat().st_size
    assert download["total_bytes"] == sum(download["files"].values()) == sum(download["parts"].values())
    assert any(path.endswith(".wasm") for path in download["files"])  # the runtime counted as the browser got it
    assert saved["checks"] == [{"check": "download (MB)", "value": round(download["total_bytes"] / 1e6, 1),
                                "bar": "< 500", "pass": True}]
    assert saved["blocked_requests"] == []

    for load in ("cold", "warm"):
        first = saved["first_answer"][load]
        assert first["first_answer_ms"] > 0 and first["load_ms"] > 0 and first["tokens"] >= 1
    for side in ("browser", "python", "server"):
        figures = saved[side]
        assert figures["utterances"] == 2 and figures["tokens"] >= 2
        assert figures["tokens_per_s"] > 0 and figures["first_token_median_ms"] > 0
        assert figures["latency_p90_ms"] >= figures["latency_median_ms"] > 0
        assert figures["schema_validity"] is not None and figures["constrained"] == 2
    assert saved["tokens_equal"] == 2
    # our serving pipeline on the artifact's source model (quantization.json's source_model), beside the page
    assert saved["server"]["model"] == json.loads((web_artifact / "quantization.json").read_text())["source_model"]
    assert saved["server"]["dtype"] in ("bfloat16", "float32") and len(saved["utterances"]["server"]) == 2
    browser, python = saved["utterances"]["browser"], saved["utterances"]["python"]
    assert [r["tokens"] for r in browser] == [r["tokens"] for r in python]
    split = saved["browser_split"]
    assert split["kv_cache_reused"] and split["per_decoded_token_ms"]["forward"] > 0
    assert saved["page"]["device"] == "wasm" and saved["page"]["dtype"] == "q4"
    assert saved["machine"]["load_average_1min"] is not None

    printed = capsys.readouterr().out
    assert "PASS  download (MB)" in printed and "greedy tokens equal to Python's: 2 of 2" in printed
    assert "| server (" in printed
    assert list(tmp_path.glob("web-2*.md"))
