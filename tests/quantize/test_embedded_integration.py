"""The embedded SmolLM2-135M-Instruct through quantize_model: INT8 (OpenVINO NNCF) and INT4 (Neural Compressor
RTN) keep the perplexity delta within a loose bound; GGUF F16 reloads with the same greedy tokens.

Run (a few minutes on 2 cores):
    OMP_NUM_THREADS=2 PYTHONPATH=. pytest -q -m integration tests/quantize/test_embedded_integration.py
"""

from __future__ import annotations

import pytest

from quantize import quantize_model, read_metadata

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FAST = {"num_eval_prompts": 4, "eval_new_tokens": 8}


def test_int8_nncf_costs_almost_nothing(tmp_path):
    pytest.importorskip("optimum.intel")
    meta = read_metadata(quantize_model(output_dir=str(tmp_path), backend="openvino", bits=8, **FAST))
    assert meta["source_model"].endswith("smollm2-135m-instruct")
    assert abs(meta["quality"]["perplexity_delta_pct"]) < 2.0  # measured ~0.1%
    assert meta["quality"]["token_agreement"] >= 0.75
    assert meta["weight_bytes"] < 0.3 * meta["source_weight_bytes"]  # INT8 vs fp32 safetensors


def test_int4_rtn_stays_within_a_loose_bound(tmp_path):
    pytest.importorskip("neural_compressor")
    meta = read_metadata(quantize_model(output_dir=str(tmp_path), backend="inc", bits=4, group_size=64, **FAST))
    assert 0.0 < meta["quality"]["perplexity_delta_pct"] < 60.0  # measured: INT4 costs this model ~20-25%


def test_gguf_f16_reloads_with_the_same_greedy_tokens(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from finetune.models import load_tokenizer, resolve_model_path

    path = quantize_model(output_dir=str(tmp_path), backend="gguf", scheme="f16", evaluate=False)
    source = AutoModelForCausalLM.from_pretrained(resolve_model_path(None), dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file="model-f16.gguf").float()
    tokenizer = load_tokenizer(None)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt").input_ids
    want = source.generate(ids, max_new_tokens=10, do_sample=False)
    got = model.generate(ids, max_new_tokens=10, do_sample=False)
    assert got[0, ids.shape[1]:].tolist() == want[0, ids.shape[1]:].tolist()
    assert "Paris" in tokenizer.decode(got[0, ids.shape[1]:])
    # Ollama, given the Modelfile, prompts as serving does: SmolLM2's default system prompt included
    import re

    from tests.quantize.ollama_render import ollama_prompt, served_prompt

    template = re.search(r'TEMPLATE """(.*?)"""', (path / "Modelfile").read_text(), re.S).group(1)
    asked = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = ollama_prompt(template, asked)
    assert prompt == served_prompt(tokenizer, asked) and "You are a helpful AI assistant named SmolLM" in prompt
