"""Gemma 3 as published from 4B up: one multimodal checkpoint (Gemma3ForConditionalGeneration), fine-tuned on chats
with LoRA on its language model only, to transformers' own loss, then served, and exported as its language model
(OpenVINO, GGUF) with the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from finetune.formatting import IGNORE_INDEX
from tests.families import CONVERSATION, build_family_model, family_tokenizer, packed_loss


def _tokenizer():
    return family_tokenizer("gemma3_text")


def _save(path, tokenizer=None, **text_overrides):
    from transformers import GenerationConfig

    tokenizer = tokenizer or _tokenizer()
    model = build_family_model("gemma3", tokenizer, **text_overrides)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=model.config.get_text_config().eos_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("all_linear", [False, True])
def test_lora_adapts_the_language_model_only(all_linear):
    from peft import get_peft_model

    from finetune import FinetuningArguments
    from finetune.memory import MemorySettings, estimate_memory
    from finetune.train import lora_config

    model = build_family_model("gemma3", _tokenizer())
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    args = FinetuningArguments(lora_all_linear=all_linear)
    estimate = estimate_memory(model.config, MemorySettings(lora_rank=args.lora_rank,
                                                            lora_targets="all-linear" if all_linear else None))
    peft = get_peft_model(model, lora_config(model, args))
    # the memory estimate before loading counts the adapters PEFT makes, not the vision tower's namesakes
    assert estimate.trainable == sum(p.numel() for p in peft.parameters() if p.requires_grad)
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in peft.named_parameters() if ".lora_A." in name}
    assert adapted and all(".language_model." in name for name in adapted)
    leaves = {name.rsplit(".", 1)[-1] for name in adapted}
    want = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} if all_linear else {
        "q_proj", "v_proj"}
    assert leaves == want
    vision = [n for n, m in model.named_modules() if ".vision_tower." in n and isinstance(m, torch.nn.Linear)]
    assert vision  # the tower has q_proj/v_proj of its own, which LoRA leaves alone


def test_training_loss_equals_transformers_own():
    """Two examples in one padding-free row, the model in training mode (where Gemma 3 requires token_type_ids,
    which finetune.families.chats_are_text supplies), our packed attention and lean ops on: the loss equals
    transformers' own on the padded batch with eager attention."""
    from finetune.families import chats_are_text

    tokenizer = _tokenizer()
    reference = build_family_model("gemma3", tokenizer, attn_implementation="eager")
    model = build_family_model("gemma3", tokenizer)
    assert model.training
    examples = [list(range(5, 29)), list(range(40, 60))]
    labels = [[IGNORE_INDEX] * 6 + ids[6:] for ids in examples]
    width = max(map(len, examples))
    pad = lambda rows, value: torch.tensor([r + [value] * (width - len(r)) for r in rows])  # noqa: E731
    ids = pad(examples, 0)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=pad([[1] * len(r) for r in examples], 0),
                             labels=pad(labels, IGNORE_INDEX), token_type_ids=torch.zeros_like(ids)).loss
    with pytest.raises(ValueError, match="token_type_ids"):  # what a chat batch met before
        model(input_ids=ids)
    chats_are_text(model)
    ours, head = packed_loss(model, examples, labels)
    assert head is not None
    assert abs(float(ours) - float(expected)) < 1e-4, (float(ours), float(expected))


@pytest.mark.parametrize("layout", ["transformers 5", "published"])
def test_the_language_model_folder_gives_the_same_logits(tmp_path, monkeypatch, layout):
    """Written once and reused; from the tensor names transformers 5 saves and from those of the published
    checkpoints (language_model.model.*, vision_tower.*), which transformers 5 still loads."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from benchmarks.train import parameter_count
    from finetune.language_model import language_model_folder
    from neural_chat_app.prepacked import weight_bytes

    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path / "home"))
    folder = _save(tmp_path / "mm")
    if layout == "published":
        weights = load_file(folder / "model.safetensors")
        renamed = {}
        for key, value in weights.items():
            for new, old in (("language_model.model.", "model.language_model.model."),
                             ("vision_tower.", "model.vision_tower."),
                             ("multi_modal_projector.", "model.multi_modal_projector.")):
                if key.startswith(old):
                    key = new + key[len(old):]
            renamed[key] = value
        assert any(k.startswith("language_model.model.") for k in renamed)
        save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    full = AutoModelForCausalLM.from_pretrained(folder).eval()
    text_folder = language_model_folder(folder)
    assert text_folder != folder and json.loads((text_folder / "config.json").read_text())["architectures"] == [
        "Gemma3ForCausalLM"]
    text, info = AutoModelForCausalLM.from_pretrained(text_folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (text_folder / "tokenizer.json").is_file() and (text_folder / "chat_template.jinja").is_file()
    ids = torch.randint(5, 300, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(full(input_ids=ids).logits, text.eval()(input_ids=ids).logits)
    # what a decode step reads, the benchmarks' bandwidth limit: the language model, not the vision tower
    assert weight_bytes(full) == weight_bytes(text) < sum(p.numel() * p.element_size() for p in full.parameters())
    assert parameter_count(str(folder)) == parameter_count(str(text_folder))
    written = (text_folder / "model.safetensors").stat().st_mtime_ns
    assert language_model_folder(folder) == text_folder
    assert (text_folder / "model.safetensors").stat().st_mtime_ns == written  # reused, not written again
    assert language_model_folder(text_folder) == text_folder  # a text-only model is its own


@pytest.mark.integration
def test_fine_tunes_merges_serves_and_exports_its_language_model(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from finetune import finetune_model
    from neural_chat_app import GenerationConfig, PipelineConfig, WeightOnlyQuantConfig, build_chatbot
    from quantize import QuantizeConfig, quantize_model
    from tests.families import gguf_family_tokenizer
    from tests.finetune.conftest import tiny_config, write_jsonl
    from tests.test_families_end_to_end import _server_answers

    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path / "home"))
    # a vocabulary llama.cpp's converter knows; the GGUF loader's defaults for Gemma 3 (tests/families.py)
    base = tmp_path / "base"
    tokenizer = gguf_family_tokenizer("gemma3_text", base)
    _save(base, tokenizer, head_dim=256, query_pre_attn_scalar=256, num_hidden_layers=6, layer_types=None)
    rows = [{"messages": [dict(m) for m in CONVERSATION]} for _ in range(12)]
    result = finetune_model(tiny_config(base, write_jsonl(tmp_path / "chat.jsonl", rows), tmp_path / "run",
                                       task="chat", max_steps=2, lora_all_linear=True, save_steps=100))
    assert result.metrics["train_loss"] == result.metrics["train_loss"]  # not NaN
    targets = json.loads((result.adapter_dir / "adapter_config.json").read_text())["target_modules"]
    assert "language_model" in targets

    source = AutoModelForCausalLM.from_pretrained(base).eval()
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir).eval()
    assert type(merged).__name__ == "Gemma3ForConditionalGeneration"
    tower = {k: v for k, v in source.state_dict().items() if "vision_tower" in k}
    assert tower and all(torch.equal(merged.state_dict()[k], v) for k, v in tower.items())  # untouched

    greedy = GenerationConfig(do_sample=False, max_new_tokens=6)
    bot = build_chatbot(PipelineConfig(model_name_or_path=str(result.merged_dir), backend="torch"))
    try:
        assert isinstance(bot.predict("What is 2 and 2?", greedy), str)
    finally:
        bot.close()
    _server_answers(result.merged_dir, tmp_path)

    quick = {"num_eval_prompts": 2, "eval_new_tokens": 8, "calibration_seq_len": 32, "num_calibration_samples": 4}
    artifact = quantize_model(QuantizeConfig(model=str(result.merged_dir), output_dir=str(tmp_path / "q"),
                                             backend="openvino", bits=8, **quick))
    meta = json.loads((artifact / "quantization.json").read_text())
    assert meta["multimodal_source"] == str(result.merged_dir.resolve())
    # The tiny model's next-token distribution is nearly flat (perplexity about 5e4), so its greedy tokens flip with
    # the CPU's bf16 rounding (agreement 0.25 on an Emerald Rapids KVM guest without AMX, 0.5 or more on Zen 4):
    # the perplexity of the same text measures that the INT8 IR computes the same distribution, on any CPU.
    assert abs(meta["quality"]["perplexity_delta_pct"]) < 1.0, meta["quality"]
    assert 0.0 <= meta["quality"]["token_agreement"] <= 1.0
    ov_bot = build_chatbot(PipelineConfig(model_name_or_path=str(artifact),
                                          optimization_config=WeightOnlyQuantConfig(weight_dtype="int8")))
    try:
        assert isinstance(ov_bot.predict("What is 2 and 2?", greedy), str)
    finally:
        ov_bot.close()

    gguf = quantize_model(QuantizeConfig(model=str(result.merged_dir), output_dir=str(tmp_path / "q"),
                                         backend="gguf", scheme="f16", evaluate=False))
    exported = AutoModelForCausalLM.from_pretrained(gguf, gguf_file="model-f16.gguf").float().eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10] * 4])
    with torch.no_grad():
        want, got = merged(input_ids=ids).logits, exported(input_ids=ids).logits
    assert (want - got).abs().max() < 0.05, float((want - got).abs().max())
    assert 'PARAMETER stop "<end_of_turn>"' in (gguf / "Modelfile").read_text()  # Gemma's chat format


@pytest.mark.integration
def test_neural_compressor_quantizes_its_language_model(tmp_path, monkeypatch):
    """backend='inc' gets the language model too: INT8 (symmetric) logits within rounding of the source's."""
    pytest.importorskip("neural_compressor")
    from transformers import AutoModelForCausalLM

    from quantize import QuantizeConfig, quantize_model
    from quantize.inc import load_inc

    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path / "home"))
    base = _save(tmp_path / "base")
    artifact = quantize_model(QuantizeConfig(model=str(base), output_dir=str(tmp_path / "q"), backend="inc", bits=8,
                                             evaluate=False))
    assert json.loads((artifact / "quantization.json").read_text())["multimodal_source"] == str(base.resolve())
    source = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    quantized = load_inc(artifact)
    assert type(quantized).__name__ == "Gemma3ForCausalLM"
    ids = torch.randint(5, 300, (1, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = source(input_ids=ids).logits, quantized(input_ids=ids).logits
    spread = (want - want.mean(-1, keepdim=True)).norm()
    assert float((got - want).norm() / spread) < 0.05


@pytest.mark.integration
def test_preference_tuning_adapts_its_language_model(tmp_path):
    """DPO on the multimodal checkpoint: the preference forward gets the same text-only treatment as chats."""
    from finetune import finetune_model
    from tests.finetune.conftest import write_jsonl
    from tests.finetune.test_preference import _config, _pairs

    base = _save(tmp_path / "base")
    result = finetune_model(_config(base, write_jsonl(tmp_path / "pairs.jsonl", _pairs()), tmp_path / "dpo", "dpo",
                                    max_steps=3))
    assert result.metrics["train_steps"] == 3 and result.metrics["eval_reward_margin"] > 0
    targets = json.loads((result.adapter_dir / "adapter_config.json").read_text())["target_modules"]
    assert "language_model" in targets
