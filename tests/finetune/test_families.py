"""Per-family facts: LoRA targets (Phi-3's fused projections) and heads whose output the model transforms.

pytest tests/finetune/test_families.py
"""

from __future__ import annotations

import pytest

from finetune import finetune_model
from finetune.families import lora_targets, transforms_its_logits
from tests.conftest import build_tiny_tokenizer
from tests.finetune.conftest import tiny_config

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # the users' guides' list


@pytest.fixture(scope="module")
def tiny_phi3_dir(tmp_path_factory):
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = Phi3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-phi3")
    Phi3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_phi3_trains_with_default_lora_targets(tiny_phi3_dir, chat_file, tmp_path):
    # PEFT has no default for Phi-3 ("Please specify target_modules"): ours adapts its fused qkv_proj
    result = finetune_model(tiny_config(tiny_phi3_dir, chat_file, tmp_path / "out", task="chat", max_steps=2,
                                        lora_all_linear=False))
    import json

    adapter = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"qkv_proj"}


def test_phi3_maps_the_guides_seven_projection_names_to_its_fused_modules(tiny_phi3_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_phi3_dir)
    assert lora_targets(model, SEVEN) == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert lora_targets(model, None) == ["qkv_proj"]
    with pytest.raises(ValueError, match=r"c_attn.*match no linear layer of this phi3.*'gate_up_proj'"):
        lora_targets(model, ["c_attn"])


def test_llama_keeps_its_names_and_peft_default(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert lora_targets(model, SEVEN) == SEVEN
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    assert lora_targets(model, None) == PEFT_DEFAULTS["llama"] == ["q_proj", "v_proj"]  # PEFT's own default


def test_head_transforms_are_read_from_the_config():
    from transformers import Gemma2Config, GraniteConfig, LlamaConfig

    assert transforms_its_logits(Gemma2Config(final_logit_softcapping=30.0))
    assert not transforms_its_logits(Gemma2Config(final_logit_softcapping=None))
    assert transforms_its_logits(GraniteConfig(logits_scaling=8.0))
    assert not transforms_its_logits(GraniteConfig(logits_scaling=1.0))
    assert not transforms_its_logits(LlamaConfig())
