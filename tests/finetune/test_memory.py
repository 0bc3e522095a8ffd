"""The memory estimate (finetune.memory): its parts, a run that cannot fit stopped before loading, the estimate
against a measured run, and the fp32 path that keeps frozen weights in bf16.

pytest tests/finetune/test_memory.py -p no:xdist
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from finetune import (
    DataArguments,
    FinetuningArguments,
    ModelArguments,
    TextGenerationFinetuningConfig,
    TrainingArguments,
    finetune_model,
)
from finetune import train as train_module
from finetune.memory import (
    MEMORY_ENV,
    InsufficientMemoryError,
    MemorySettings,
    count_parameters,
    estimate_memory,
    model_config,
    settings_from_config,
)
from tests.conftest import build_tiny_llama, build_tiny_tokenizer
from tests.finetune.conftest import write_jsonl


def _shape_folder(path, name="llama-3.1-8b"):
    """A shape's config.json, the tests' tokenizer and the random-weights marker: no weights anywhere."""
    from benchmarks.shapes import shape_config
    from finetune.models import RANDOM_WEIGHTS_FILE

    shape_config(name).save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    (path / RANDOM_WEIGHTS_FILE).write_text(json.dumps({"seed": 0}))
    return path


def test_estimate_of_the_8b_shape_by_part():
    from benchmarks.shapes import shape_config

    config = shape_config("llama-3.1-8b")
    assert count_parameters(config) == 8_030_261_248  # Llama-3.1-8B's published count
    ours = estimate_memory(config, MemorySettings(batch=1, seq_len=256, lora_rank=16, gradient_checkpointing=True))
    assert ours.parts["weights"] == pytest.approx(8_030_261_248 * 2 / 2**30, rel=1e-3)  # bf16
    assert 16 < ours.total_gib < 22  # what lets the 8B shape train on a 24 GB machine
    fp32_path = estimate_memory(config, MemorySettings(precision="fp32", batch=1, seq_len=256, lora_rank=16,
                                                       gradient_checkpointing=True))
    assert fp32_path.parts["weights"] == ours.parts["weights"]  # frozen weights stay in bf16
    assert fp32_path.total_gib < 24
    plain = estimate_memory(config, MemorySettings(batch=1, seq_len=256, frozen_bytes=4.0, lean_ops=False,
                                                   chunked_head=False))
    assert plain.total_gib > 32  # fp32 weights alone
    long = MemorySettings(batch=4, seq_len=2048)
    assert (estimate_memory(config, long).parts["activations"]
            > 5 * estimate_memory(config, MemorySettings(batch=4, seq_len=2048,
                                                          gradient_checkpointing=True)).parts["activations"])
    assert (estimate_memory(config, MemorySettings(batch=4, seq_len=2048, chunked_head=False)).parts["head"]
            > 5 * estimate_memory(config, long).parts["head"])


def test_activations_count_the_query_width_and_the_qk_norms():
    """Qwen3-0.6B's 16 heads x 128 make q and the attention output twice the hidden size (1024), and its q/k
    norms keep normalised copies: counting either as hidden-wide underestimated its plain peak (6973 MB measured,
    6707 estimated; 7096 now, benchmarks/results/train-qwen3-0.6b-20261206-030517.json)."""
    from transformers import LlamaConfig

    from benchmarks.shapes import shape_config

    settings = MemorySettings(batch=2, seq_len=256)
    wide = shape_config("qwen3-0.6b")
    narrow = shape_config("qwen3-0.6b")
    narrow.head_dim, narrow.num_key_value_heads = 64, 16  # q = hidden, the same KV width (8 x 128 = 16 x 64)
    assert (estimate_memory(wide, settings).parts["activations"]
            > 1.1 * estimate_memory(narrow, settings).parts["activations"])
    same_without_norms = LlamaConfig(**{k: getattr(wide, k) for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "vocab_size", "tie_word_embeddings")})
    assert (estimate_memory(wide, settings).parts["activations"]
            > estimate_memory(same_without_norms, settings).parts["activations"])


def test_settings_validate_themselves():
    with pytest.raises(ValueError, match="precision"):
        MemorySettings(precision="fp8")
    with pytest.raises(ValueError, match="seq_len"):
        MemorySettings(seq_len=0)


@pytest.fixture
def model_must_not_load(monkeypatch):
    """Any attempt to load weights fails the test: the estimate must stop the run first."""

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded although the estimate said it cannot fit")

    monkeypatch.setattr(train_module, "load_model", must_not_load)


def _simulate_a_bf16_cpu(monkeypatch):
    """The figures a test checks are bf16's: on a CPU without bf16 instructions (or with ONEDNN_MAX_CPU_ISA below
    them) a run computes in fp32 and needs more, so such a test runs on a simulated AMX CPU whatever this one is."""
    import dataclasses

    from finetune import hardware

    simulated = dataclasses.replace(hardware.detect_hardware(), amx_bf16=True, avx512_bf16=True,
                                    onednn_isa_limit=None)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hardware, "detect_hardware", lambda: simulated)


def test_a_run_that_cannot_fit_stops_before_loading_with_the_numbers(tmp_path, monkeypatch, chat_file,
                                                                    model_must_not_load):
    _simulate_a_bf16_cpu(monkeypatch)
    monkeypatch.setenv(MEMORY_ENV, "8")
    folder = _shape_folder(tmp_path / "llama-3.1-8b")
    config = TextGenerationFinetuningConfig(
        ModelArguments(model_name_or_path=str(folder)),
        DataArguments(train_file=str(chat_file), max_seq_length=256),
        TrainingArguments(output_dir=str(tmp_path / "out"), do_train=True, max_steps=1,
                          per_device_train_batch_size=2, report_to="none"),
        FinetuningArguments(task="chat", device="cpu"))
    with pytest.raises(InsufficientMemoryError) as err:
        finetune_model(config)
    message = str(err.value)
    assert re.search(r"would need about 2\d\.\d GiB", message)
    assert "8.0 GiB is available (NEURALCHAT_MEMORY_GIB=8)" in message
    assert "weights 14.96" in message and "stopped before loading the model" in message
    for change in ("gradient_checkpointing=True", "per_device_train_batch_size=1", "qlora=True"):
        assert change in message
    assert not (tmp_path / "out" / "adapter").exists()


def test_a_preference_run_that_cannot_fit_stops_before_loading(tmp_path, monkeypatch, model_must_not_load):
    """DPO holds two sequences (chosen and rejected) per pair: the same batch that fits SFT may not fit DPO."""

    folder = _shape_folder(tmp_path / "qwen2.5-0.5b", "qwen2.5-0.5b")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Q{i}?", "chosen": "Yes.", "rejected": "No."}
                                                   for i in range(4)])

    def config(task):
        return TextGenerationFinetuningConfig(
            ModelArguments(model_name_or_path=str(folder)),
            DataArguments(train_file=str(pairs), max_seq_length=1024),
            TrainingArguments(output_dir=str(tmp_path / task), do_train=True, max_steps=1,
                              per_device_train_batch_size=4, report_to="none"),
            FinetuningArguments(task=task, device="cpu"))

    shape = model_config(str(folder))
    sft = estimate_memory(shape, settings_from_config(config("chat"), "bf16")).total_gib
    dpo = estimate_memory(shape, settings_from_config(config("dpo"), "bf16")).total_gib
    assert dpo > sft * 1.2  # the second sequence's activations and logits
    monkeypatch.setenv(MEMORY_ENV, f"{(sft + dpo) / 2:.2f}")  # room for SFT, not for DPO
    with pytest.raises(InsufficientMemoryError, match="stopped before loading the model"):
        finetune_model(config("dpo"))
    assert not (tmp_path / "dpo" / "adapter").exists()


def test_the_doctor_shows_the_same_estimate(tmp_path, monkeypatch, capsys):
    from finetune import doctor

    monkeypatch.setenv(MEMORY_ENV, "8")
    folder = _shape_folder(tmp_path / "llama-3.1-8b")
    assert doctor.main(["--no-probe", "--model", str(folder), "--seq-len", "256", "--batch", "2",
                        "--precision", "bf16"]) in (0, 1)
    out = capsys.readouterr().out
    expected = estimate_memory(folder, MemorySettings(batch=2, seq_len=256, lora_targets=None)).total_gib
    assert f"about {expected:.1f} GiB at its peak" in out
    assert "finetune_model would stop before loading it" in out and "gradient_checkpointing=True" in out


_MEASURE = """
import json, sys
from finetune import (DataArguments, FinetuningArguments, ModelArguments, TextGenerationFinetuningConfig,
                      TrainingArguments, finetune_model)
from finetune.memory import estimate_memory, settings_from_config
from finetune.models import resolve_model_path
from benchmarks.machine import peak_rss_mb

model, data, out = sys.argv[1:4]
config = TextGenerationFinetuningConfig(
    ModelArguments(model_name_or_path=model), DataArguments(train_file=data, max_seq_length=256),
    TrainingArguments(output_dir=out, do_train=True, max_steps=3, per_device_train_batch_size=4, report_to="none",
                      save_strategy="no", disable_tqdm=True),
    FinetuningArguments(task="chat", lora_all_linear=True, lora_rank=16, lora_dropout=0.0,
                        save_merged_model=False, generation_eval=False, device="cpu"))
finetune_model(config)
estimate = estimate_memory(resolve_model_path(model), settings_from_config(config, "bf16"))
print(json.dumps({"peak_gib": peak_rss_mb() / 1024, "estimate_gib": estimate.total_gib}))
"""


@pytest.mark.integration
def test_estimate_is_within_25_percent_of_a_measured_run(tmp_path):
    """A 4-layer, hidden-512 model with a 32k vocabulary, batches of 4 x 256 tokens, in its own process."""
    from transformers import LlamaConfig

    from finetune.models import RANDOM_WEIGHTS_FILE

    tokenizer = build_tiny_tokenizer()
    LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / RANDOM_WEIGHTS_FILE).write_text("{}")
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 60)  # every example fills 256 tokens
    data = write_jsonl(tmp_path / "long.jsonl", [{"messages": [{"role": "user", "content": f"{i}"},
                                                              {"role": "assistant", "content": long}]}
                                                 for i in range(16)])
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path), str(data), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["estimate_gib"] == pytest.approx(figures["peak_gib"], rel=0.25), figures


def test_fp32_path_keeps_frozen_weights_in_bf16_and_computes_in_fp32():
    """compute_frozen_in over bf16 weights gives the loss and gradients of an fp32 model holding the same (bf16)
    values, and autograd keeps no fp32 copy of a weight."""
    from finetune.frozen_weights import compute_frozen_in

    tokenizer = build_tiny_tokenizer()
    narrow = build_tiny_llama(tokenizer).requires_grad_(False)
    for param in narrow.parameters():  # the weights only: the rotary buffer stays fp32, as a bf16 load keeps it
        param.data = param.data.to(torch.bfloat16)
    wide = build_tiny_llama(tokenizer).requires_grad_(False)
    wide.load_state_dict({k: v.float() for k, v in narrow.state_dict().items()})
    undo = compute_frozen_in(narrow, torch.float32)
    ids = torch.randint(0, len(tokenizer), (1, 24))
    results, saved = [], []
    for model in (narrow, wide):
        embeds = model.get_input_embeddings()(ids).float().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            logits = model(inputs_embeds=embeds).logits
        loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
        loss.backward()
        results.append((loss.detach(), embeds.grad))
        if model is narrow:
            assert logits.dtype == torch.float32
            weights = {p.shape for p in narrow.parameters() if p.ndim == 2}
            assert not [t for t in saved if t.dtype == torch.float32 and tuple(t.shape) in weights]
    assert results[0][0] == pytest.approx(float(results[1][0]), rel=1e-5)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)
    # the matrices stay bf16; the norms' few values are fp32 while it computes (frozen_weights), bf16 after
    assert all(p.dtype == torch.bfloat16 for p in narrow.parameters() if p.ndim == 2)
    assert all(p.dtype == torch.float32 for p in narrow.parameters() if p.ndim == 1)
    undo()
    assert "forward" not in vars(narrow.model.layers[0].self_attn.q_proj)
    assert all(p.dtype == torch.bfloat16 for p in narrow.parameters())


def test_finetune_in_fp32_stores_frozen_weights_in_bf16(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    """The fp32 path as a CPU without bf16 instructions takes it (forced with precision="fp32")."""

    seen = {}
    original = train_module._trainer

    def spy(model, *args, **kwargs):
        seen["dtypes"] = {(p.requires_grad, p.dtype) for p in model.parameters() if p.ndim == 2}
        seen["norms"] = {p.dtype for p in model.parameters() if p.ndim == 1}
        return original(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "_trainer", spy)
    result = finetune_model(TextGenerationFinetuningConfig(
        ModelArguments(model_name_or_path=str(tiny_model_dir)),
        DataArguments(train_file=str(chat_file), max_seq_length=128),
        TrainingArguments(output_dir=str(tmp_path / "out"), do_train=True, max_steps=2,
                          per_device_train_batch_size=2, report_to="none", save_strategy="no",
                          disable_tqdm=True),
        FinetuningArguments(task="chat", precision="fp32", save_merged_model=False, generation_eval=False,
                            device="cpu")))
    assert seen["dtypes"] == {(False, torch.bfloat16), (True, torch.float32)}  # frozen bf16, adapters fp32
    assert seen["norms"] == {torch.float32}  # a few values a layer, widened once (frozen_weights)
    assert result.metrics["train_loss"] > 0 and result.adapter_dir.is_dir()


@pytest.mark.parametrize(("limit_gib", "precision"), [("26", "bf16"), ("60", "fp32")])
def test_fp32_measured_faster_trains_in_bf16_where_only_bf16_fits(tmp_path, monkeypatch, chat_file, limit_gib,
                                                                   precision):
    """A CPU whose bf16 runs on AVX512-BF16 only and measured slower than fp32 (the Emerald Rapids guest with AMX
    hidden) trains in fp32, unless only bf16 fits: the 8B shape in 26 GiB (fp32 would need its frozen weights kept
    in bf16 and more besides)."""
    import dataclasses

    from finetune import hardware

    simulated = dataclasses.replace(hardware.detect_hardware(), amx_bf16=False, amx_int8=False, avx512_bf16=True,
                                    onednn_isa_limit=None)
    monkeypatch.setattr(hardware, "detect_hardware", lambda: simulated)
    monkeypatch.setattr(train_module, "detect_hardware", lambda: simulated)
    monkeypatch.setattr(hardware, "matmul_speeds", lambda: {"bf16": 164.0, "fp32": 326.0})
    monkeypatch.setenv(MEMORY_ENV, limit_gib)
    folder = _shape_folder(tmp_path / "llama-3.1-8b")
    config = TextGenerationFinetuningConfig(
        ModelArguments(model_name_or_path=str(folder)), DataArguments(train_file=str(chat_file), max_seq_length=256),
        TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", per_device_train_batch_size=2),
        FinetuningArguments(task="chat", device="cpu"))
    assert train_module.run_setup(config)[1] == precision
