"""The GPU QLoRA path (bitsandbytes NF4, double quantization, prepare_model_for_kbit_training) runs on CPU too.

pytest tests/finetune/test_qlora.py
"""

import json

import pytest
import torch

from finetune import finetune_model
from finetune.train import _training_args
from tests.finetune.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]
bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (the gpu extra)")


def test_qlora_trains_on_cpu_and_merges_into_full_precision(tiny_model_dir, chat_file, tmp_path):
    out = tmp_path / "out"
    config = tiny_config(tiny_model_dir, chat_file, out, task="chat", qlora=True, max_steps=6)
    result = finetune_model(config)
    meta = json.loads((out / "training_metadata.json").read_text())
    assert meta["method"] == "qlora" and meta["metrics"]["train_steps"] == 6
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir)
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32  # plain weights, not 4-bit


def test_qlora_model_is_4bit_nf4_with_double_quant(tiny_model_dir, chat_file, tmp_path):
    from finetune.train import _load_model_for_training

    config = tiny_config(tiny_model_dir, chat_file, tmp_path / "out", task="chat", qlora=True)
    from finetune.models import load_tokenizer

    model = _load_model_for_training(str(tiny_model_dir), config, "cpu", "bf16", load_tokenizer(str(tiny_model_dir)))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_state.quant_type == "nf4"
    assert layer.weight.quant_state.nested  # double quantization
    assert any("lora_A" in n for n, p in model.named_parameters() if p.requires_grad)


def test_cuda_selects_the_paged_8bit_optimizer(tiny_model_dir, chat_file, tmp_path):
    config = tiny_config(tiny_model_dir, chat_file, tmp_path / "out", task="chat", qlora=True)
    assert _training_args(config, "cuda", "bf16", packed_batches=True).optim == "paged_adamw_8bit"
    assert _training_args(config, "cpu", "bf16", packed_batches=True).optim != "paged_adamw_8bit"
