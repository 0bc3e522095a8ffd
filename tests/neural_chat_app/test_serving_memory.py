"""Serving's memory estimate: checked before loading, bf16 weights computed in fp32 where fp32 ones do not fit on a
CPU without bf16 matmuls, and a refusal with the figures and what would fit where nothing does."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from finetune.memory import MEMORY_ENV, InsufficientMemoryError, MemorySettings, model_config
from finetune.serving_memory import serving_estimate, serving_shapes
from neural_chat_app.memory import plan_serving
from tests.conftest import build_tiny_tokenizer


def _config_only(path, name="llama-3.1-8b"):
    """A published shape's config.json and a tokenizer: no weights, so a load would fail on the missing files."""
    from benchmarks.shapes import shape_config

    shape_config(name).save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    return path


def _simulate_cpu(monkeypatch, bf16: bool):
    from finetune import hardware

    simulated = dataclasses.replace(hardware.detect_hardware(), amx_bf16=bf16, avx512_bf16=bf16,
                                    onednn_isa_limit=None)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hardware, "detect_hardware", lambda: simulated)


@pytest.mark.parametrize("name, storage, compute, measured_gib", [
    ("qwen2.5-0.5b", "bf16", "bf16", 1.73), ("llama-3.2-1b", "bf16", "bf16", 3.38),
    ("gemma-3-1b", "bf16", "bf16", 3.02), ("llama-3.2-3b", "bf16", "bf16", 7.42),
    ("llama-3.1-8b", "bf16", "bf16", 16.45), ("gemma-3-4b", "bf16", "bf16", 9.93),
    ("phi-4-mini", "bf16", "bf16", 8.96),
    ("llama-3.2-1b", "fp32", "fp32", 6.23), ("llama-3.2-1b", "bf16", "fp32", 3.06),
    ("llama-3.1-8b", "bf16", "fp32", 16.10),
    # bf16 with the plain copy for fp32 prompts: the Emerald Rapids guest, 2026-12-08, batch 1
    ("llama-3.2-1b", "bf16+copy", "bf16", 5.29)])
def test_the_estimate_covers_the_measured_serving_peaks(name, storage, compute, measured_gib):
    """The peaks of `python -m benchmarks infer --shape NAME` (ours, prompts up to 512 tokens, benchmarks/REPORT.md;
    fp32 compute measured with oneDNN capped at AVX2): the estimate, which reserves 4,096 tokens of cache, is above
    each and within 15%."""
    from benchmarks.shapes import shape_config

    storage, copy, _ = storage.partition("+copy")
    estimate = serving_estimate(serving_shapes(shape_config(name)), storage, compute, 1, 22.0, prompt_copy=bool(copy))
    assert measured_gib < estimate.total_gib < measured_gib * 1.15, estimate.parts


def test_8b_in_24_gb_bf16_fits_and_fp32_keeps_bf16_weights(tmp_path):
    folder = _config_only(tmp_path / "8b")
    bf16 = plan_serving(folder, "bf16", limit_gib=22.0)
    assert (bf16.storage, bf16.compute, bf16.narrow) == ("bf16", "bf16", False)
    assert 14.9 < bf16.estimate.parts["weights"] < 15.0  # GiB: 8.03 B parameters x 2 bytes

    fp32 = plan_serving(folder, "fp32", limit_gib=22.0)
    assert (fp32.storage, fp32.compute, fp32.narrow) == ("bf16", "fp32", True)
    assert fp32.estimate.total_gib <= 22.0
    assert "fp32 weights would need 3" in fp32.reason and "22.0 GiB available (passed in)" in fp32.reason

    with pytest.raises(InsufficientMemoryError) as refused:
        plan_serving(folder, "fp32", narrow_allowed=False, limit_gib=22.0)
    message = str(refused.value)
    assert "in fp32 would need about 3" in message and "stopped before loading the model" in message
    assert "bf16 weights computed in fp32 (what MixedPrecisionConfig() does when fp32 does not fit): 1" in message
    assert "(fits)" in message.splitlines()[1]


def test_a_model_that_fits_nowhere_is_refused_with_what_would_fit(tmp_path):
    folder = _config_only(tmp_path / "8b")
    with pytest.raises(InsufficientMemoryError) as refused:
        plan_serving(folder, "bf16", max_concurrency=2, limit_gib=12.0)
    message = str(refused.value)
    assert "8.03 B parameters" in message and "12.0 GiB is available (passed in)" in message
    lines = {line.split(":")[0].strip(): line for line in message.splitlines()[1:]}
    assert "(fits)" not in lines["one request at a time (the server's limits.max_concurrent=1)"]
    assert "(fits)" in lines["WeightOnlyQuantConfig(weight_dtype='int4') with backend='openvino'"]
    assert "(fits)" not in lines["WeightOnlyQuantConfig(weight_dtype='int8') with backend='openvino'"]
    assert MEMORY_ENV in message


def test_build_chatbot_stops_before_loading(tmp_path, monkeypatch):
    from neural_chat_app import PipelineConfig, build_chatbot

    _simulate_cpu(monkeypatch, bf16=True)
    monkeypatch.setenv(MEMORY_ENV, "12")
    folder = _config_only(tmp_path / "8b")
    with pytest.raises(InsufficientMemoryError, match=rf"{MEMORY_ENV}=12\); stopped before loading the model"):
        build_chatbot(PipelineConfig(model_name_or_path=str(folder)))


def test_the_server_estimates_a_kv_cache_for_each_request_it_runs_at_once(tmp_path, monkeypatch):
    """limits.max_concurrent requests generate at once on the torch backend, each with its own KV cache: the
    estimate before loading counts them all, and the refusal says one at a time would fit."""
    from neural_chat_app.server import create_app, load_settings

    _simulate_cpu(monkeypatch, bf16=True)
    folder = _config_only(tmp_path / "8b")
    shapes = serving_shapes(model_config(folder))
    one, two = (serving_estimate(shapes, "bf16", "bf16", n, None).total_gib for n in (1, 2))
    monkeypatch.setenv(MEMORY_ENV, f"{(one + two) / 2:.4f}")
    settings = load_settings(None, model=str(folder), backend="torch", limits={"max_concurrent": 2},
                             chat_log={"enabled": False})
    with pytest.raises(InsufficientMemoryError) as refused:
        create_app(settings)
    message = str(refused.value)
    assert f"about {two:.1f} GiB" in message
    assert "one request at a time (the server's limits.max_concurrent=1)" in message and "(fits)" in message


def test_the_doctor_gives_the_estimate_and_the_choice_build_chatbot_makes(tmp_path, monkeypatch):
    """`python -m finetune doctor --model M` prints the serving estimate and how the weights would be held, the
    figures plan_serving (what build_chatbot runs) uses."""
    from finetune import doctor

    # a CPU without bf16 matmuls: serving computes in fp32, as the doctor's and build_chatbot's estimates both say
    monkeypatch.setattr(doctor, "read_cpu", lambda: doctor.CPU("AVX2 EPYC", {"avx2", "fma"}, 2, 2, 2))
    _simulate_cpu(monkeypatch, bf16=False)
    folder = _config_only(tmp_path / "8b")
    shapes = serving_shapes(model_config(folder))
    fp32 = serving_estimate(shapes, "fp32", "fp32", 1, None).total_gib
    narrow = serving_estimate(shapes, "bf16", "fp32", 1, None).total_gib
    for limit, weights in ((fp32 + 1, "fp32"), ((fp32 + narrow) / 2, "bf16"), (narrow - 1, None)):
        monkeypatch.setenv(MEMORY_ENV, f"{limit:.4f}")
        report = doctor.diagnose(run_probe=False, model=str(folder),
                                 settings=MemorySettings(precision="fp32", batch=1, seq_len=256, lora_targets=None))
        facts = report.facts["serving_estimate"]
        assert facts["weights"] == weights
        text = doctor.render(report)
        if weights is None:
            with pytest.raises(InsufficientMemoryError):
                plan_serving(folder, "fp32")
            assert "build_chatbot would stop before loading it" in text
            continue
        plan = plan_serving(folder, "fp32")
        assert plan.storage == weights and facts["total_gib"] == round(plan.estimate.total_gib, 2)
        assert f"about {plan.estimate.total_gib:.1f} GiB, one request at a time ({weights} weights" in text


def test_a_cpu_without_bf16_serves_bf16_weights_where_fp32_ones_do_not_fit(tiny_model_dir, monkeypatch):
    """MixedPrecisionConfig (the default) on a CPU without bf16 matmuls: fp32 where it fits; with the memory set
    between the two estimates, bf16 weights computed in fp32, said so, and the chatbot answers as the fp32 one."""
    from neural_chat_app import MixedPrecisionConfig, PipelineConfig, build_chatbot
    from neural_chat_app.loading import compute_line
    from neural_chat_app.prepacked import PrepackedLinear

    _simulate_cpu(monkeypatch, bf16=False)
    shapes = serving_shapes(model_config(tiny_model_dir))
    fp32 = serving_estimate(shapes, "fp32", "fp32", 1, None).total_gib
    narrow = serving_estimate(shapes, "bf16", "fp32", 1, None).total_gib
    assert narrow < fp32
    config = PipelineConfig(model_name_or_path=str(tiny_model_dir), optimization_config=MixedPrecisionConfig())

    monkeypatch.setenv(MEMORY_ENV, f"{fp32 + 0.01:.4f}")
    wide = build_chatbot(config)
    assert wide.backend.dtype == "float32"
    assert any(isinstance(m, PrepackedLinear) for m in wide.backend.model.modules())

    monkeypatch.setenv(MEMORY_ENV, f"{(fp32 + narrow) / 2:.4f}")
    bot = build_chatbot(config)
    model = bot.backend.model
    assert bot.backend.dtype == "float32"
    assert {p.dtype for p in model.parameters() if p.ndim == 2} == {torch.bfloat16}
    assert not any(isinstance(m, PrepackedLinear) for m in model.modules())
    assert "keep bf16 weights, widened to fp32" in compute_line(bot.backend)
    ids = torch.randint(5, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = wide.backend.model(input_ids=ids).logits
        # fp32 of the same (bf16-rounded) values: the prompt's logits within bf16 rounding of the fp32 weights'
        torch.testing.assert_close(model(input_ids=ids).logits, reference, atol=0.05, rtol=0.05)
    assert isinstance(bot.predict("Hello"), str)
    wide.close()
    bot.close()


def test_a_lora_adapter_attaches_to_bf16_weights_computed_in_fp32(tiny_model_dir, tmp_path, monkeypatch):
    """An adapter attached at serve time wraps the widening layers: a prompt's logits with it selected are those of
    the fp32 model holding the same bf16 values with the adapter merged in (PEFT loads an adapter in its base
    layer's dtype, so its values are rounded to bf16 as on any bf16 base, then computed in fp32)."""
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    from benchmarks.serve_load import random_lora_adapters
    from finetune.models import load_model
    from neural_chat_app import PipelineConfig
    from neural_chat_app.loading import load_backend

    _simulate_cpu(monkeypatch, bf16=False)
    (adapter,) = random_lora_adapters(tiny_model_dir, tmp_path, 1, rank=4, std=0.3, seed=1)
    shapes = serving_shapes(model_config(tiny_model_dir))
    fp32 = serving_estimate(shapes, "fp32", "fp32", 1, None).total_gib
    narrow = serving_estimate(shapes, "bf16", "fp32", 1, None).total_gib
    monkeypatch.setenv(MEMORY_ENV, f"{(fp32 + narrow) / 2:.4f}")
    backend = load_backend(PipelineConfig(model_name_or_path=str(tiny_model_dir)))
    backend.add_adapter("a", adapter)

    rounded = tmp_path / "rounded"  # the adapter as PEFT holds it on a bf16 base
    shutil.copytree(adapter, rounded)
    weights = load_file(rounded / "adapter_model.safetensors")
    save_file({k: v.bfloat16().float() for k, v in weights.items()}, rounded / "adapter_model.safetensors")
    reference = load_model(str(tiny_model_dir), dtype=torch.bfloat16).float()
    reference = PeftModel.from_pretrained(reference, str(rounded)).merge_and_unload().eval()
    ids = torch.randint(5, reference.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), backend._selected("a"):
        served = backend.model(input_ids=ids).logits
    with torch.inference_mode():
        expected = reference(input_ids=ids).logits
    torch.testing.assert_close(served, expected, rtol=1e-4, atol=1e-4)
    backend.close()


def _held_values(cache) -> int:
    """Values of the distinct tensors a transformers cache object holds (its layers' keys, values, states)."""
    seen: set[int] = set()

    def walk(obj, depth: int = 0) -> int:
        if isinstance(obj, torch.Tensor):
            if obj.numel() and obj.data_ptr() not in seen:
                seen.add(obj.data_ptr())
                return obj.numel()
            return 0
        if depth > 4:
            return 0
        items = obj if isinstance(obj, (list, tuple)) else vars(obj).values() if hasattr(obj, "__dict__") else []
        return sum(walk(item, depth + 1) for item in items)

    return walk(cache)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3_text", "qwen3_5", "mistral3", "gemma4"])
def test_the_cache_estimate_is_what_transformers_cache_holds_layer_by_layer(family):
    """Sliding-window layers (window 16 here) hold their window, Gemma 4's shared layers nothing, Qwen 3.5's
    delta-net layers a fixed state: the estimate counts each as transformers' cache keeps it, on the safe side
    by at most a token per sliding layer."""
    from finetune.serving_memory import cache_values
    from tests.families import NEW_FAMILIES, build_family_model, build_new_family, family_tokenizer, new_family_config

    if family in NEW_FAMILIES:
        tokenizer = family_tokenizer(NEW_FAMILIES[family])
        model, text = build_new_family(family, tokenizer), new_family_config(family, tokenizer).get_text_config()
    else:
        model = build_family_model(family, family_tokenizer(family))
        text = model.config
    for tokens in (10, 40):  # inside and past the window
        with torch.no_grad():
            cache = model(input_ids=torch.randint(10, 200, (1, tokens)), use_cache=True).past_key_values
        held, estimated = _held_values(cache), cache_values(text, tokens)
        assert held - 2 <= estimated <= held * 1.05, (tokens, held, estimated)  # 2: the sliding layers' counters
    full = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * 40
    if family in ("gemma2", "gemma3_text", "qwen3_5", "gemma4"):
        assert estimated < full  # the count of every layer as full attention, which these models got before


def _avx512_bf16_without_amx(monkeypatch, speeds):
    """The Emerald Rapids guest (AMX hidden) or a Zen 4 EPYC: bf16 on AVX512-BF16, its matmul speeds as given."""
    from finetune import hardware

    simulated = dataclasses.replace(hardware.detect_hardware(), amx_bf16=False, avx512_bf16=True,
                                    onednn_isa_limit=None)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hardware, "detect_hardware", lambda: simulated)
    monkeypatch.setattr(hardware, "matmul_speeds", lambda: speeds)


def test_the_plain_copy_for_fp32_prompts_is_kept_where_it_fits(tmp_path):
    """The 1B shape keeps it in 22 GiB; the 8B shape's (14 GiB more) does not fit beside its bf16 weights, and the
    plan says so."""
    from transformers import AutoModelForCausalLM

    from benchmarks.shapes import shape_config
    from finetune.serving_memory import PROMPT_COPY

    small = plan_serving(_config_only(tmp_path / "1b", "llama-3.2-1b"), "bf16", limit_gib=22.0, prompt_copy=True)
    assert small.prompt_copy and not small.narrow and "a plain copy of them for prompts" in small.reason
    with torch.device("meta"):  # every linear weight once more in bf16, the tied head's being the embeddings
        model = AutoModelForCausalLM.from_config(shape_config("llama-3.2-1b"))
    linear = sum(m.weight.numel() for m in model.modules() if type(m) is torch.nn.Linear and m is not model.lm_head)
    assert small.estimate.parts[PROMPT_COPY] == pytest.approx(linear * 2 / 2**30, rel=1e-3)
    large = plan_serving(_config_only(tmp_path / "8b"), "bf16", limit_gib=22.0, prompt_copy=True)
    assert not large.prompt_copy and "prompts run in bf16: the plain copy" in large.reason
    assert large.estimate.total_gib == plan_serving(tmp_path / "8b", "bf16", limit_gib=22.0).estimate.total_gib
    assert not plan_serving(tmp_path / "1b", "bf16", limit_gib=22.0).prompt_copy  # only when asked


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                    reason="this CPU has no oneDNN bf16 linear (no AVX512-BF16, AMX or AVX-NE-CONVERT)")
def test_prompts_run_in_fp32_where_bf16_matmuls_measured_slower(tiny_model_dir, monkeypatch):
    """MixedPrecisionConfig on AVX512-BF16 without AMX whose bf16 matmuls measured half the fp32 speed (the Emerald
    Rapids guest): bf16 weights reordered for decoding, their plain copy kept for prompts in fp32 where it fits,
    said in the compute line; where it does not fit, or bf16 measured faster (a Zen 4), or on AMX (not measured),
    no copy."""
    from finetune import hardware
    from finetune.serving_memory import PROMPT_COPY
    from neural_chat_app import MixedPrecisionConfig, PipelineConfig, build_chatbot
    from neural_chat_app.loading import compute_line
    from neural_chat_app.prepacked import PrepackedLinear

    def copies(bot):
        layers = [m for m in bot.backend.model.modules() if isinstance(m, PrepackedLinear)]
        assert layers and bot.backend.dtype == "bfloat16"
        kept = {m.prompt_weight is not None for m in layers}
        assert len(kept) == 1  # all or none
        bot.close()
        return kept.pop()

    config = PipelineConfig(model_name_or_path=str(tiny_model_dir), optimization_config=MixedPrecisionConfig())
    shapes = serving_shapes(model_config(tiny_model_dir))
    plain = serving_estimate(shapes, "bf16", "bf16", 1, None).total_gib
    copy = serving_estimate(shapes, "bf16", "bf16", 1, None, prompt_copy=True)
    assert copy.parts[PROMPT_COPY] > 0

    _avx512_bf16_without_amx(monkeypatch, {"bf16": 164.0, "fp32": 326.0})
    monkeypatch.setenv(MEMORY_ENV, f"{copy.total_gib + 0.01:.6f}")
    bot = build_chatbot(config)
    line = compute_line(bot.backend)
    assert "prompts (over 64 tokens at once) in fp32 over a plain copy of the weights, because" in line
    assert "its bf16 matmuls measured 164 GFLOPS against 326 in fp32" in line
    assert isinstance(bot.predict("Tell me about the weather " * 20), str)  # a prompt of over 64 tokens
    assert copies(bot)

    monkeypatch.setenv(MEMORY_ENV, f"{(plain + copy.total_gib) / 2:.6f}")
    assert not copies(build_chatbot(config))
    monkeypatch.setenv(MEMORY_ENV, f"{copy.total_gib + 0.01:.6f}")
    _avx512_bf16_without_amx(monkeypatch, {"bf16": 420.0, "fp32": 300.0})
    assert not copies(build_chatbot(config))

    def unexpected():
        raise AssertionError("measured on AMX")

    _simulate_cpu(monkeypatch, bf16=True)
    monkeypatch.setattr(hardware, "matmul_speeds", unexpected)
    assert not copies(build_chatbot(config))


def test_the_doctor_says_where_prompts_run_in_fp32(tmp_path, monkeypatch):
    """On AVX512-BF16 without AMX whose bf16 matmuls measured slower, `doctor --model` estimates serving with the
    plain copy, as build_chatbot would hold it; where the copy does not fit, without it."""
    from finetune import doctor
    from finetune.serving_memory import PROMPT_COPY

    flags = {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"}
    monkeypatch.setattr(doctor, "read_cpu", lambda: doctor.CPU("Xeon, AMX hidden", flags, 2, 2, 2))
    _avx512_bf16_without_amx(monkeypatch, {"bf16": 164.0, "fp32": 326.0})
    folder = _config_only(tmp_path / "1b", "llama-3.2-1b")
    settings = MemorySettings(precision="fp32", batch=1, seq_len=256, lora_targets=None)
    for limit, copy in ((22.0, True), (5.0, False)):
        monkeypatch.setenv(MEMORY_ENV, str(limit))
        report = doctor.diagnose(run_probe=False, model=str(folder), settings=settings)
        facts = report.facts["serving_estimate"]
        plan = plan_serving(folder, "bf16", prompt_copy=True)
        assert (facts["compute"], facts["fp32_prompts"], plan.prompt_copy) == ("bf16", copy, copy)
        assert facts["total_gib"] == round(plan.estimate.total_gib, 2)
        assert (PROMPT_COPY in facts["parts_gib"]) is copy
        (line,) = [x for x in doctor.render(report).splitlines() if x.startswith("serve ")]
        assert ("prompts in fp32 over a plain copy" in line) is copy
