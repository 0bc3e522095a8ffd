"""The inference and roofline benchmarks run on a tiny model and write well-formed results (no timing asserted).

pytest tests/benchmarks/test_infer_roofline.py
"""

import json
import types

import pytest

from benchmarks import infer, machine, roofline
from finetune.models import load_tokenizer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_infer_writes_one_row_per_path_batch_and_prompt(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(machine, "RESULTS", tmp_path)
    monkeypatch.setattr(infer, "memory_read_gbps", lambda: 10.0)
    assert infer.main(["--model", str(tiny_model_dir), "--paths", "hf-fp32,hf-bf16,ov-int8,ov-int4,llamacpp",
                       "--batches", "1,2", "--prompts", "16", "--new-tokens", "6"]) == 0
    payload = json.loads((tmp_path / "infer-latest.json").read_text())
    rows = payload["results"]
    tok = load_tokenizer(str(tiny_model_dir))
    assert {(r["path"], r["batch"]) for r in rows} == {(p, b) for p in ("hf-fp32", "hf-bf16", "ov-int8", "ov-int4")
                                                       for b in (1, 2)}
    for r in rows:
        assert r["ttft_ms"] > 0 and r["decode_tokens_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["p50_token_ms"] <= r["p99_token_ms"]
        # the weights are read once per step for the whole batch: the limit grows with it
        assert r["decode_limit_tokens_per_s"] == pytest.approx(r["batch"] * 10e9 / (payload["parameters"] * (
            {"hf-fp32": 4.0, "hf-bf16": 2.0, "ov-int8": 1.03, "ov-int4": 0.56}[r["path"]])))
        assert r["fraction_of_decode_limit"] == pytest.approx(r["decode_tokens_per_s"] / r["decode_limit_tokens_per_s"])
        # our INT4 path is the README's AWQ recipe, its perplexity cost measured by quantize_model beside the speed
        assert (r["path"] == "ov-int4") == isinstance(r.get("perplexity_vs_source_pct"), float)
    # every engine prefills the same prompt: none wraps it in the chat template (openvino-genai does by default)
    assert {r["input_tokens"] for r in rows} == {len(tok(infer.prompt_of(tok, 16, 1))["input_ids"])}
    # The llamacpp path cannot run here (llama-cpp-python is not a dependency; where it is built, the tiny model
    # has no GGUF file): it is reported as not measured, with the reason
    import importlib.util

    reason = ("embedded model's GGUF file only" if importlib.util.find_spec("llama_cpp")
              else "llama-cpp-python")
    assert reason in payload["errors"]["llamacpp"]
    assert "| ov-int8 | 1 |" in capsys.readouterr().out


def test_infer_at_a_shape_runs_plain_beside_ours_on_random_weights(tmp_path, monkeypatch, capsys):
    """--shape: the shape's folder is written (no weights), plain generate in the machine's precision beside ours
    (the served model, its linear weights reordered for oneDNN), each against the bytes it reads per step."""
    from benchmarks import shapes

    tiny = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 49152, "tie_word_embeddings": True}
    monkeypatch.setitem(shapes.SHAPES, "tiny-llama", tiny)
    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(machine, "RESULTS", tmp_path)
    monkeypatch.setattr(infer, "memory_read_gbps", lambda: 10.0)
    assert infer.main(["--shape", "tiny-llama", "--prompts", "16", "--new-tokens", "6", "--repeats", "1"]) == 0
    payload = json.loads((tmp_path / "infer-tiny-llama-latest.json").read_text())
    plain = "hf-bf16" if machine.serve_precision() == "bf16" else "hf-fp32"
    assert payload["model"] == payload["shape"] == "tiny-llama" and not payload["errors"]
    assert [(r["path"], r["batch"]) for r in payload["results"]] == [(plain, 1), ("ours", 1)]
    ours = payload["results"][1]
    assert ours["dtype"] == {"hf-bf16": "bfloat16", "hf-fp32": "float32"}[plain]
    assert ours["decode_limit_tokens_per_s"] == pytest.approx(10e9 / ours["weight_bytes"])
    assert ours["weight_bytes"] == payload["parameters"] * (2 if plain == "hf-bf16" else 4)  # tied head once
    assert "linear layers reordered for oneDNN" in ours["compute"]
    assert f"ours: {ours['compute']}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="ov-int8 read the model's weights from disk"):
        infer.main(["--shape", "tiny-llama", "--paths", "ours,ov-int8"])


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_roofline_measures_the_training_precision_and_computes_limits(precision, tiny_model_dir, tmp_path,
                                                                       monkeypatch):
    # An AMX machine trains in bf16; an AVX2-only one in fp32, where bf16 has no fast kernel and is timed small.
    sizes = {}

    def gflops(dtype, n, **kw):
        sizes[dtype] = n
        return {"bf16": 800.0, "fp32": 160.0}[dtype]

    monkeypatch.setattr(machine, "RESULTS", tmp_path)
    monkeypatch.setattr(machine, "matmul_gflops", gflops)
    monkeypatch.setattr(machine, "train_precision", lambda device="cpu": precision)
    monkeypatch.setattr(roofline, "train_precision", lambda device="cpu": precision)
    monkeypatch.setattr(roofline, "memory_read_gbps", lambda: 20.0)
    assert roofline.main(["--model", str(tiny_model_dir)]) == 0
    payload = json.loads((tmp_path / "roofline-latest.json").read_text())
    params, peak = payload["parameters"], {"bf16": 800.0, "fp32": 160.0}[precision]
    assert payload["train_precision"] == precision and sizes[precision] == 4096
    assert sizes["fp32" if precision == "bf16" else "bf16"] == (4096 if precision == "bf16" else 512)
    assert payload["limits"]["train_lora_tokens_per_s"] == pytest.approx(peak * 1e9 / (4 * params))
    assert payload["limits"]["decode_tokens_per_s"]["bf16"] == pytest.approx(20e9 / (2 * params))
    shapes = payload["model_shape_gflops"]
    assert shapes > 0  # measured for real, at the tiny model's shapes
    assert payload["limits"]["train_lora_tokens_per_s_at_model_shapes"] == pytest.approx(shapes * 1e9 / (4 * params))
    table = next(tmp_path.glob("roofline-2*.md")).read_text()
    assert f"| {precision} matmul at the model's shapes | {shapes:.0f} GFLOPS |" in table
    assert "| LoRA training limit at the model's shapes |" in table and f"training limits in {precision}" in table
    assert f"at the {precision} peak" in table
    # a result written before the model-shape figures existed still renders, without them
    del payload["model_shape_gflops"], payload["limits"]["train_lora_tokens_per_s_at_model_shapes"]
    assert "| LoRA training limit at the model's shapes | - |" in roofline.render(payload)
    hw = payload["machine"]["hardware"]
    assert payload["machine"]["cpu_flags"] and hw["isa"] and hw["cpu_precision"]
    if hw["cpu_precision"] == "bf16" and hw["amx_bf16"]:
        assert payload["amx_in_use"] and "amx" in payload["onednn_bf16_kernel"]


def test_the_training_precision_is_the_machines(monkeypatch):
    from finetune import hardware

    assert machine.train_precision("cuda") == "bf16"
    assert machine.train_precision() == hardware.matmul_precision()[0]


def test_model_shapes_cover_every_linear_weight_once_per_step(tiny_model_dir):
    """The FLOP weights of model_shape_gflops: each nn.Linear of the model (the tied lm_head included) once."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert sum(fan_in * fan_out * uses for fan_in, fan_out, uses in machine.model_linear_shapes(config)) == weights
    # a config object and a model folder are both accepted
    assert machine.model_shape_gflops(config, tokens=32, seconds=0.01) > 0
    assert machine.model_shape_gflops(str(tiny_model_dir), tokens=32, seconds=0.01) > 0
    assert machine.model_shape_gflops(config, tokens=32, seconds=0.01, precision="fp32") > 0


def test_matmul_peak_is_the_best_timing_window(monkeypatch):
    """A slow window (a neighbour's burst on a shared VM) does not lower the peak: the best window counts."""
    # window 1: start, 1 matmul, stop at 1.0 s; window 2: start, 2 matmuls, stop after 0.1 s
    clock = iter([0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.05, 1.1, 1.1])

    from finetune import hardware  # where the benchmarks' matmul timing lives (machine re-exports it)

    monkeypatch.setattr(hardware, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    gflops = machine.matmul_gflops("fp32", n=8, seconds=0.2, windows=2)
    assert gflops == pytest.approx(2 * 8**3 * 2 / 0.1 / 1e9)
