"""Real shapes without their weights (benchmarks.shapes, finetune.models' random-weights folders).

pytest tests/benchmarks/test_shapes.py -p no:xdist
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from benchmarks import shapes
from finetune.models import RANDOM_WEIGHTS_FILE, load_model
from tests.conftest import build_tiny_tokenizer

# The parameter counts the model cards publish (tied embeddings counted once).
PUBLISHED = {"qwen2.5-0.5b": 494_032_768, "llama-3.2-1b": 1_235_814_400, "qwen2.5-1.5b": 1_543_714_304,
             "llama-3.2-3b": 3_212_749_824, "llama-3.1-8b": 8_030_261_248, "qwen3-0.6b": 596_049_920,
             "gemma-3-1b": 999_885_952, "gemma-2-2b": 2_614_341_888, "phi-3-mini": 3_821_079_552,
             "qwen3-4b": 4_022_468_096, "mistral-7b": 7_248_023_552}
# Where the hub gives three digits only: Gemma 3 4B's "4.3B params", the vision tower included; Phi-4-mini's 3.84B.
PUBLISHED_TO_3_DIGITS = {"gemma-3-4b": 4.30e9, "phi-4-mini": 3.84e9}


@pytest.mark.parametrize("name", sorted(shapes.SHAPES))
def test_every_shape_has_its_published_parameter_count(name):
    if name in PUBLISHED_TO_3_DIGITS:
        assert round(shapes.shape_parameters(name), -7) == PUBLISHED_TO_3_DIGITS[name]
    else:
        assert shapes.shape_parameters(name) == PUBLISHED[name]


def test_a_tokenizer_cut_to_a_smaller_vocabulary_still_round_trips(tmp_path):
    """Mistral's and Phi-3's vocabularies are smaller than the borrowed tokenizer's: cut, every id fits."""
    from transformers import PreTrainedTokenizerFast

    build_tiny_tokenizer().save_pretrained(tmp_path)
    text = "The quick brown fox jumps over the lazy dog, twice: 2 + 2 = 4. Überraschung!"
    full = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    shapes._fit_vocabulary(tmp_path / "tokenizer.json", 300)
    cut = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    ids = cut(text)["input_ids"]
    assert len(cut) == 300 and max(ids) < 300
    assert cut.decode(ids) == text
    assert len(ids) > len(full(text)["input_ids"])  # fewer merges: more tokens for the same text
    assert cut.convert_tokens_to_ids("<|im_end|>") == full.convert_tokens_to_ids("<|im_end|>")


def test_unknown_shape_names_the_known_ones():
    with pytest.raises(SystemExit, match="llama-3.1-8b"):
        shapes.shape_config("llama-9b")


def _tiny_shape(path, tied=True):
    from transformers import Qwen2Config

    Qwen2Config(vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=tied).save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    (path / RANDOM_WEIGHTS_FILE).write_text(json.dumps({"seed": 3}))
    return path


def test_a_shape_folder_builds_random_weights_directly_in_the_asked_dtype(tmp_path):
    folder = _tiny_shape(tmp_path)
    model = load_model(str(folder), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as the config says
    layer = model.model.layers[0]
    assert torch.all(layer.input_layernorm.weight == 1) and torch.all(layer.self_attn.q_proj.bias == 0)
    assert 0.01 < float(layer.mlp.up_proj.weight.detach().float().std()) < 0.03
    # every matrix its own values: exporters that store equal constants once (OpenVINO) would shrink the model
    assert not torch.equal(layer.self_attn.q_proj.weight, model.model.layers[1].self_attn.q_proj.weight)
    again = load_model(str(folder), dtype=torch.bfloat16)  # seeded: the same weights every time
    assert torch.equal(again.model.layers[0].mlp.down_proj.weight, layer.mlp.down_proj.weight)
    ids = torch.randint(0, 600, (1, 12))
    assert torch.isfinite(model(ids).logits).all()


def test_a_quantized_load_of_a_shape_writes_its_random_weights_once(tmp_path):
    """The GPU recipe's QLoRA quantizes while loading: the random weights are written into the folder first (this
    part runs on a CPU; bitsandbytes quantizes there too)."""
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    folder = _tiny_shape(tmp_path, tied=False)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    model = load_model(str(folder), dtype=torch.bfloat16, quantization_config=quant, device_map={"": "cpu"})
    assert (folder / "random-weights" / "config.json").is_file()
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"


def _args(device: str, **kw) -> argparse.Namespace:
    return argparse.Namespace(shape="qwen2.5-0.5b", device=device, variants="plain-fp32,plain-bf16,ours",
                              gradient_checkpointing="auto", batch=2, seq_len=256, lora_rank=16, model=None, **kw)


def test_prepare_shape_picks_the_sides_for_the_device(tmp_path, monkeypatch):
    from benchmarks.machine import train_precision

    monkeypatch.setattr(shapes, "write_shape_folder", lambda name, folder: _tiny_shape(tmp_path))
    cpu = _args("cpu")
    shapes.prepare_shape(cpu)
    plain = "plain-bf16" if train_precision("cpu") == "bf16" else "plain-fp32"
    assert cpu.variants == f"{plain},ours" and cpu.model == str(tmp_path)
    assert cpu.gradient_checkpointing == "off"  # a tiny model fits without it
    gpu = _args("cuda")
    shapes.prepare_shape(gpu)
    assert gpu.variants == "plain-bf16,ours,ours-qlora" and gpu.gradient_checkpointing == "off"


def test_a_side_that_cannot_fit_is_not_started(tmp_path, monkeypatch):
    from finetune.memory import MEMORY_ENV

    args = _args("cpu")
    args.model = str(_tiny_shape(tmp_path))
    monkeypatch.setenv(MEMORY_ENV, "0.1")
    assert "estimated peak" in shapes.shape_side_skip("plain-bf16", args)
    assert "> 0.1 GiB available (NEURALCHAT_MEMORY_GIB=0.1)" in shapes.shape_side_skip("ours", args)
    monkeypatch.setenv(MEMORY_ENV, "64")
    assert shapes.shape_side_skip("ours", args) is None
    assert shapes.shape_side_skip("ours", _args("cuda")) is None  # a GPU's memory is not estimated
