"""FP8-published checkpoints (Ministral 3 8B Instruct 2512) on a CPU: their weights dequantized to bf16 once."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch


def _fp8_copy(source, target, block: int | None):
    """`source`'s language-model projections in float8_e4m3fn with their scales, as an FP8 checkpoint publishes them:
    one scale per tensor (block None) or per block x block tile."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    tensors = {}
    for key, weight in load_file(source / "model.safetensors").items():
        if "language_model" in key and ".layers." in key and key.endswith("proj.weight"):
            if block is None:
                scale = weight.abs().max() / 448.0
                expanded = scale
            else:
                tiles = weight.unflatten(0, (-1, block)).unflatten(2, (-1, block))  # (rows/b, b, cols/b, b)
                scale = tiles.abs().amax(dim=(1, 3)) / 448.0
                expanded = scale.repeat_interleave(block, 0).repeat_interleave(block, 1)
            tensors[key] = (weight / expanded).to(torch.float8_e4m3fn)
            tensors[key.removesuffix("weight") + "weight_scale_inv"] = scale.float()
            tensors[key.removesuffix("weight") + "activation_scale"] = torch.tensor(1.0)
        else:
            tensors[key] = weight
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((target / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "static",
                                     "weight_block_size": None if block is None else [block, block],
                                     "modules_to_not_convert": ["model.vision_tower", "lm_head"]}
    (target / "config.json").write_text(json.dumps(config))
    return target, tensors


@pytest.mark.parametrize("block", [None, 32], ids=["per-tensor", "32x32 blocks"])
def test_fp8_checkpoint_loads_as_its_weights_times_their_scales(block, tmp_path, monkeypatch):
    from safetensors import safe_open

    from finetune.fp8_weights import dequantize
    from finetune.models import load_model, resolve_model_path
    from tests.families import save_new_family

    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path / "home"))
    source = save_new_family("mistral3", tmp_path / "bf16")
    fp8, tensors = _fp8_copy(source, tmp_path / "fp8", block)
    folder = resolve_model_path(str(fp8))
    assert folder.startswith(str(tmp_path / "home" / "fp8-dequantized"))
    assert "quantization_config" not in json.loads((Path(folder) / "config.json").read_text())
    with safe_open(f"{folder}/model.safetensors", "pt") as weights:
        assert not [k for k in weights.keys() if "scale" in k]  # noqa: SIM118
    model = load_model(str(fp8), dtype=torch.float32)
    name = "model.language_model.layers.1.mlp.down_proj.weight"  # the module's; the file names it as saved
    stored = next(key for key in tensors if key.endswith("layers.1.mlp.down_proj.weight"))
    scale = tensors[stored.removesuffix("weight") + "weight_scale_inv"]
    expected = dequantize(tensors[stored], scale).to(torch.bfloat16).float()
    assert torch.equal(model.get_parameter(name), expected)
    original = load_model(str(source), dtype=torch.float32).get_parameter(name)
    assert (model.get_parameter(name) - original).abs().max() <= original.abs().max() / 8  # FP8's 3 mantissa bits
    stamp = (Path(folder) / "source.json").stat().st_mtime_ns
    assert resolve_model_path(str(fp8)) == folder  # written once
    assert (Path(folder) / "source.json").stat().st_mtime_ns == stamp


def test_block_scales_cover_sides_that_are_no_multiple_of_the_block():
    """DeepSeek-style 128x128 blocks on a side of 300 rows: three row blocks, the last one 44 rows."""
    from finetune.fp8_weights import dequantize

    weight = torch.randn(300, 200).to(torch.float8_e4m3fn)
    scale = torch.rand(3, 2) + 0.5
    expected = weight.float().clone()
    for i, rows in enumerate((slice(0, 128), slice(128, 256), slice(256, 300))):
        for j, cols in enumerate((slice(0, 128), slice(128, 200))):
            expected[rows, cols] *= scale[i, j]
    assert torch.equal(dequantize(weight, scale, [128, 128]), expected)
    assert not torch.equal(dequantize(weight, scale), expected)  # 100x100 tiles: why the config's block size is read
    with pytest.raises(ValueError, match="do not tile a 301x200 weight evenly"):
        dequantize(torch.randn(301, 200).to(torch.float8_e4m3fn), scale)


@pytest.mark.skipif(importlib.util.find_spec("triton") is not None, reason="triton is installed here: transformers "
                    "loads FP8 checkpoints itself, and this machine's loader is not the CPU one this test documents")
def test_transformers_own_fp8_loader_needs_triton_which_the_cpu_torch_lacks(tmp_path):
    """Why the weights are dequantized here: transformers' FP8 loader imports triton, even to dequantize."""
    from transformers import AutoModelForImageTextToText

    from tests.families import save_new_family

    fp8, _ = _fp8_copy(save_new_family("mistral3", tmp_path / "bf16"), tmp_path / "fp8", None)
    with pytest.raises(ModuleNotFoundError, match="triton"):
        AutoModelForImageTextToText.from_pretrained(fp8)


@pytest.mark.integration
def test_fine_tuning_an_fp8_checkpoint_merges_into_a_plain_bf16_model(tmp_path, monkeypatch):
    from finetune import finetune_model
    from finetune.models import load_model
    from tests.families import chat_rows, save_new_family
    from tests.finetune.conftest import tiny_config, write_jsonl

    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path / "home"))
    fp8, _ = _fp8_copy(save_new_family("mistral3", tmp_path / "bf16"), tmp_path / "fp8", None)
    chat = write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    result = finetune_model(tiny_config(fp8, chat, tmp_path / "run", task="chat", max_steps=2, lora_all_linear=False,
                                        save_steps=100))
    merged = json.loads((result.merged_dir / "config.json").read_text())
    assert "quantization_config" not in merged and merged["architectures"] == ["Mistral3ForConditionalGeneration"]
    assert load_model(str(result.merged_dir), dtype=torch.float32) is not None


@pytest.mark.integration
def test_the_fp8_model_by_its_hub_id_serves_from_the_dequantized_copy(tmp_path, monkeypatch):
    """What a user with a network gets for mistralai/Ministral-3-8B-Instruct-2512 (published in FP8), from a cache
    laid out as the hub client leaves it."""
    from finetune.models import resolve_model_path
    from neural_chat_app import GenerationConfig, PipelineConfig, build_chatbot
    from tests.families import save_new_family
    from tests.finetune.test_models import _hub_snapshot

    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    fp8, _ = _fp8_copy(save_new_family("mistral3", tmp_path / "bf16"), tmp_path / "fp8", 32)
    repo = "mistralai/Ministral-3-8B-Instruct-2512"
    _hub_snapshot(tmp_path / "hf", repo, fp8)
    assert resolve_model_path(repo).startswith(str(tmp_path / "home" / "fp8-dequantized"))
    bot = build_chatbot(PipelineConfig(model_name_or_path=repo, backend="torch"))
    try:
        assert isinstance(bot.predict("What is 2 and 2?", GenerationConfig(do_sample=False, max_new_tokens=4)), str)
    finally:
        bot.close()
