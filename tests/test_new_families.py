"""The families published from late 2025 on, as published: Qwen 3.5 (gated delta-net layers beside attention,
loaded as its language model alone), Ministral 3 (Mistral3ForConditionalGeneration) and Gemma 4
(Gemma4ForConditionalGeneration).

Qwen 3.5's delta-net layers carry a state along the sequence: in a packed row each example would start from the
state the example before it left (finetune.packed_attention.split_stateful_mixers runs them once per example). A
model with stateful layers that cannot be split trains on padded batches instead.
"""

from __future__ import annotations

import json

import pytest
import torch

from finetune.formatting import IGNORE_INDEX
from tests.families import NEW_FAMILIES, build_new_family, chat_rows, family_tokenizer, packed_loss

KINDS = list(NEW_FAMILIES)
EXAMPLES = [list(range(5, 29)), list(range(40, 60))]  # longer than Gemma 4's window (16) and Ministral 3's YaRN base
LABELS = [[IGNORE_INDEX] * 6 + ids[6:] for ids in EXAMPLES]


def _padded(rows, value):
    width = max(map(len, rows))
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def _reference_loss(model):
    """transformers' own loss of EXAMPLES on a right-padded batch."""
    ids = _padded(EXAMPLES, 0)
    mask = _padded([[1] * len(r) for r in EXAMPLES], 0)
    return model(input_ids=ids, attention_mask=mask, labels=_padded(LABELS, IGNORE_INDEX)).loss


@pytest.mark.parametrize("kind", KINDS)
def test_training_loss_equals_transformers_own(kind):
    """Two examples in one padding-free row with packed attention, the stateful layers split and lean ops on: the
    loss equals transformers' own on the padded batch with eager attention."""
    tokenizer = family_tokenizer(NEW_FAMILIES[kind])
    reference = build_new_family(kind, tokenizer, attn_implementation="eager")
    model = build_new_family(kind, tokenizer)
    with torch.no_grad():
        expected = _reference_loss(reference)
    ours, _ = packed_loss(model, EXAMPLES, LABELS)
    assert abs(float(ours) - float(expected)) < 2e-5, (float(ours), float(expected))


def test_qwen3_5_delta_net_layers_would_read_the_previous_example_without_the_split():
    """What the split prevents, measured: the packed row without it gives another loss and other gradients."""
    from finetune.packed_attention import NAME, stateful_layer_types

    tokenizer = family_tokenizer("qwen3")
    model = build_new_family("qwen3_5", tokenizer)
    assert stateful_layer_types(model) == {"linear_attention"}
    with torch.no_grad():
        expected = float(_reference_loss(model))
        split = float(packed_loss(model, EXAMPLES, LABELS)[0])
    # still on per-example attention (packed_loss switched it), the delta-net layers now left to run along the row
    assert model.config._attn_implementation == NAME
    from finetune.collate import PaddingFreeCollator, kept_positions_loss

    batch = PaddingFreeCollator(boundaries=True)([{"input_ids": i, "labels": lab} for i, lab in zip(EXAMPLES, LABELS)])
    kept = batch.pop("labels")
    with torch.no_grad():
        leaked = float(kept_positions_loss(model(**batch), kept))
    assert abs(split - expected) < 2e-5 and abs(leaked - expected) > 1e-4, (split, leaked, expected)


def test_qwen3_5_gradients_through_the_split_equal_the_padded_batch_s_under_checkpointing():
    """The backward through the per-example delta-net calls, recomputed by gradient checkpointing as training runs
    it, gives transformers' gradients on the padded batch."""
    from finetune.collate import PaddingFreeCollator, kept_positions_loss
    from finetune.packed_attention import use_packed_rows

    tokenizer = family_tokenizer("qwen3")
    reference = build_new_family("qwen3_5", tokenizer)
    model = build_new_family("qwen3_5", tokenizer)
    _reference_loss(reference).backward()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    boundaries, undo = use_packed_rows(model)
    assert boundaries
    batch = PaddingFreeCollator(boundaries=True)([{"input_ids": i, "labels": lab} for i, lab in zip(EXAMPLES, LABELS)])
    kept = batch.pop("labels")
    kept_positions_loss(model(**batch), kept).backward()
    undo()
    for name in ("model.layers.0.linear_attn.in_proj_qkv.weight", "model.layers.1.linear_attn.A_log",
                 "model.layers.3.self_attn.q_proj.weight", "model.embed_tokens.weight"):
        ours, theirs = model.get_parameter(name).grad, reference.get_parameter(name).grad
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-4), name


def test_default_lora_targets_reach_the_delta_net_layers_and_users_projection_names_map_to_them():
    from finetune.families import lora_targets

    model = build_new_family("qwen3_5", family_tokenizer("qwen3"))
    assert set(lora_targets(model, None)) == {"q_proj", "v_proj", "in_proj_qkv"}
    assert lora_targets(model, ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]) == [
        "q_proj", "in_proj_qkv", "k_proj", "v_proj", "o_proj", "out_proj", "down_proj"]
    with pytest.raises(ValueError, match=r"lora_target_modules \['qkv_proj'\] match no linear layer"):
        lora_targets(model, ["qkv_proj"])


def _lfm2(tokenizer):
    """A tiny LFM2: short-convolution layers beside attention, a stateful type nothing here splits."""
    from transformers import AutoModelForCausalLM, Lfm2Config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(Lfm2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, layer_types=["conv", "full_attention"],
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)).float()


def test_stateful_layers_that_cannot_be_split_train_on_padded_batches(tmp_path, caplog):
    import logging

    from finetune import finetune_model
    from finetune.packed_attention import use_packed_rows
    from tests.conftest import build_tiny_tokenizer
    from tests.finetune.conftest import tiny_config, write_jsonl

    tokenizer = build_tiny_tokenizer()
    model = _lfm2(tokenizer)
    assert use_packed_rows(model) is None  # nothing switched: its rows must be padded
    model.save_pretrained(tmp_path / "lfm2")
    tokenizer.save_pretrained(tmp_path / "lfm2")
    rows = write_jsonl(tmp_path / "data.jsonl", [{"instruction": f"Say {i}", "input": "", "output": f"It is {i}."}
                                                 for i in range(8)])
    with caplog.at_level(logging.INFO, logger="finetune.train"):
        result = finetune_model(tiny_config(tmp_path / "lfm2", rows, tmp_path / "run", max_steps=2,
                                            save_merged_model=False))
    assert result.metrics["train_loss"] == result.metrics["train_loss"]  # not NaN
    assert "examples are padded, not packed" in caplog.text
    with pytest.raises(ValueError, match="dataset_concatenation: Lfm2ForCausalLM has layers \\(conv\\)"):
        finetune_model(tiny_config(tmp_path / "lfm2", rows, tmp_path / "packed", max_steps=2,
                                   dataset_concatenation=True, per_device_train_batch_size=1, save_merged_model=False))


MERGED_AS = {"qwen3_5": "Qwen3_5ForCausalLM", "mistral3": "Mistral3ForConditionalGeneration",
             "gemma4": "Gemma4ForConditionalGeneration"}


@pytest.mark.integration
@pytest.mark.parametrize("kind", KINDS)
def test_fine_tunes_serves_and_quantizes_as_published(kind, tmp_path):
    """The published layout by folder: the memory estimate counts what loads, LoRA adapts the language model,
    the merged model reloads, chats and answers through the server; INC quantizes its language model; OpenVINO
    exports Gemma 4 and Ministral 3 and refuses Qwen 3.5, which optimum-intel cannot export with this transformers,
    saying which exports take it."""
    from finetune import finetune_model
    from finetune.memory import count_parameters, model_config
    from finetune.models import load_model
    from neural_chat_app import GenerationConfig, PipelineConfig, build_chatbot
    from quantize import QuantizeConfig, quantize_model
    from tests.families import save_new_family
    from tests.finetune.conftest import tiny_config, write_jsonl

    base = save_new_family(kind, tmp_path / "base")
    loaded = load_model(str(base), dtype=torch.float32)
    assert count_parameters(model_config(base)) == sum(p.numel() for p in loaded.parameters())
    del loaded
    chat = write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    result = finetune_model(tiny_config(base, chat, tmp_path / "run", task="chat", max_steps=2,
                                        lora_all_linear=False, save_steps=100))
    assert result.metrics["train_loss"] == result.metrics["train_loss"]
    targets = json.loads((result.adapter_dir / "adapter_config.json").read_text())["target_modules"]
    if kind == "qwen3_5":
        assert set(targets) == {"q_proj", "v_proj", "in_proj_qkv"}
    else:  # a regular expression over the language model only
        assert "language_model" in targets and "vision" not in targets
    assert json.loads((result.merged_dir / "config.json").read_text())["architectures"] == [MERGED_AS[kind]]

    greedy = GenerationConfig(do_sample=False, max_new_tokens=6)
    bot = build_chatbot(PipelineConfig(model_name_or_path=str(result.merged_dir), backend="torch"))
    try:
        assert isinstance(bot.predict("What is 2 and 2?", greedy), str)
        assert isinstance("".join(bot.predict_stream("What is 2 and 2?", greedy)[0]), str)
    finally:
        bot.close()
    from tests.test_families_end_to_end import _server_answers

    _server_answers(result.merged_dir, tmp_path)  # a chat completion through the HTTP server, the openai client

    quick = {"num_eval_prompts": 2, "eval_new_tokens": 8, "calibration_seq_len": 32, "num_calibration_samples": 4}
    inc = quantize_model(QuantizeConfig(model=str(result.merged_dir), output_dir=str(tmp_path / "inc"),
                                        backend="inc", bits=8, **quick))
    assert json.loads((inc / "quantization.json").read_text())["quality"]["token_agreement"] >= 0.0
    openvino = QuantizeConfig(model=str(result.merged_dir), output_dir=str(tmp_path / "ov"), backend="openvino",
                              bits=8, **quick)
    if kind == "qwen3_5":
        with pytest.raises(NotImplementedError, match=r"OpenVINO export of this qwen3_5_text model: optimum-intel .* "
                                                      r"backend='inc' .* backend='gguf'"):
            quantize_model(openvino)
    else:
        artifact = quantize_model(openvino)
        assert 0.0 <= json.loads((artifact / "quantization.json").read_text())["quality"]["token_agreement"] <= 1.0
        from neural_chat_app import WeightOnlyQuantConfig

        ov_bot = build_chatbot(PipelineConfig(model_name_or_path=str(artifact),
                                              optimization_config=WeightOnlyQuantConfig(weight_dtype="int8")))
        try:
            assert ov_bot.backend.kind == "openvino" and isinstance(ov_bot.predict("What is 2 and 2?", greedy), str)
        finally:
            ov_bot.close()


@pytest.mark.integration
def test_ministral_3_s_openvino_export_computes_what_torch_computes_past_the_yarn_base(tmp_path):
    """optimum-intel has no export configuration for ministral3; exported with Mistral's, the fp32 IR (run in fp32,
    not the CPU plugin's default bf16 where the CPU has it) gives torch's logits past position 16, where YaRN's base
    ends and the queries are scaled by position: by more than the export's error."""
    import transformers.models.ministral3.modeling_ministral3 as ministral3
    from optimum.intel import OVModelForCausalLM

    from finetune.language_model import language_model_folder
    from finetune.models import load_model
    from quantize.openvino import export_openvino
    from tests.families import save_new_family

    text = language_model_folder(save_new_family("mistral3", tmp_path / "base"))
    exported = OVModelForCausalLM.from_pretrained(export_openvino(text, tmp_path / "ir", "fp32"), compile=True,
                                                  ov_config={"INFERENCE_PRECISION_HINT": "f32"})
    model = load_model(str(text), dtype=torch.float32).eval()
    ids = torch.tensor([list(range(5, 45))])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        scale = ministral3.get_llama_4_attn_scale
        ministral3.get_llama_4_attn_scale = lambda *args: torch.ones_like(scale(*args))
        try:
            unscaled = model(input_ids=ids).logits
        finally:
            ministral3.get_llama_4_attn_scale = scale
    got = exported(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    error, scaling = float((got - expected).abs().max()), float((unscaled - expected).abs().max())
    assert error < 1e-5 and scaling > 10 * error, (error, scaling)


GGUF_ARCH = {"qwen3_5": "qwen35", "mistral3": "mistral3", "gemma4": "gemma4"}


@pytest.mark.integration
@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_s_converter_writes_its_language_model(kind, tmp_path):
    """llama.cpp's converter writes the language model of the published checkpoint (Qwen 3.5 without the
    multi-token-prediction head, which transformers does not load): the architecture llama.cpp runs it as, every
    layer, and the embeddings as the source has them."""
    import numpy as np

    from quantize import QuantizeConfig, quantize_model
    from quantize.gguf_export import import_gguf
    from tests.families import save_new_family

    base = save_new_family(kind, tmp_path / "base", gguf=True)
    path = quantize_model(QuantizeConfig(model=str(base), output_dir=str(tmp_path / "q"), backend="gguf",
                                         scheme="f16", evaluate=False))
    reader = import_gguf().GGUFReader(path / "model-f16.gguf")
    arch = reader.fields["general.architecture"].contents()
    assert arch == GGUF_ARCH[kind]
    text = json.loads((base / "config.json").read_text())["text_config"]
    assert reader.fields[f"{arch}.block_count"].contents() == text["num_hidden_layers"]
    tensors = {t.name: t for t in reader.tensors}
    from safetensors import safe_open

    from finetune.language_model import language_model_key

    with safe_open(str(base / "model.safetensors"), "pt") as weights:
        key = next(k for k in weights.keys() if language_model_key(k) == "model.embed_tokens.weight")  # noqa: SIM118
        source = weights.get_tensor(key).numpy()
    written = np.asarray(tensors["token_embd.weight"].data, dtype=np.float32).reshape(source.shape)
    assert np.allclose(written, source, atol=1e-3)


@pytest.mark.integration
def test_preference_tuning_runs_qwen3_5_s_delta_net_layers_per_example(tmp_path):
    """DPO on Qwen 3.5: the padding-free preference forward puts chosen and rejected replies in one row, which the
    delta-net layers must not read across."""
    from finetune import finetune_model
    from tests.families import save_new_family
    from tests.finetune.conftest import write_jsonl
    from tests.finetune.test_preference import _config, _pairs

    calls = []
    base = save_new_family("qwen3_5", tmp_path / "base")
    import transformers.models.qwen3_5.modeling_qwen3_5 as qwen3_5

    forward = qwen3_5.Qwen3_5GatedDeltaNet.forward

    def counted(self, hidden_states, *args, **kwargs):
        calls.append(hidden_states.shape[1])
        return forward(self, hidden_states, *args, **kwargs)

    qwen3_5.Qwen3_5GatedDeltaNet.forward = counted
    try:
        result = finetune_model(_config(base, write_jsonl(tmp_path / "pairs.jsonl", _pairs()), tmp_path / "dpo",
                                        "dpo", max_steps=3))
    finally:
        qwen3_5.Qwen3_5GatedDeltaNet.forward = forward
    assert result.metrics["train_steps"] == 3 and result.metrics["eval_reward_margin"] > 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    longest = max(len(tokenizer.apply_chat_template(pair["prompt"] + pair[reply], return_dict=True)["input_ids"])
                  for pair in _pairs() for reply in ("chosen", "rejected"))
    # one call per chosen or rejected sequence, never the row of a whole batch (two sequences or more)
    assert calls and longest <= max(calls) + 2 and max(calls) <= longest, (max(calls), longest)
