"""Linear weights reordered for oneDNN at load time: same outputs, same tokens, the tied head left alone, and the
layers turned back exactly when LoRA adapters attach."""

from __future__ import annotations

import pytest
import torch

from neural_chat_app.prepacked import (
    PrepackedLinear,
    prepack_linears,
    tied_head_copy,
    unpack_linears,
    weight_bytes,
    why_not_prepacked,
)
from tests.families import build_family_model, family_tokenizer

BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    not BF16, reason="this CPU has no oneDNN bf16 linear (no AVX512-BF16, AMX or AVX-NE-CONVERT)"))]


def _model(family: str, dtype):
    return build_family_model(family, family_tokenizer(family)).to(dtype).eval()


def _greedy(model, ids, n=12):
    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, pad_token_id=0)[0].tolist()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
def test_same_logits_and_tokens_with_the_weights_reordered(family, dtype):
    """Llama (tied head), Qwen2 (q/k/v biases), Phi-3 (fused projections, untied head)."""
    model = _model(family, dtype)
    ids = torch.randint(5, model.config.vocab_size, (1, 37), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = model(input_ids=ids).logits.float()
    tokens_before = _greedy(model, ids)
    bytes_before = weight_bytes(model)
    linears = [name for name, m in model.named_modules() if type(m) is torch.nn.Linear]

    assert why_not_prepacked(model) is None
    replaced = prepack_linears(model)

    tied = model.config.tie_word_embeddings
    assert replaced == len(linears) - (1 if tied else 0)
    assert type(model.get_output_embeddings()) is (torch.nn.Linear if tied else PrepackedLinear)
    if tied:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert weight_bytes(model) == bytes_before  # the reorder moves bytes, it adds none
    with torch.inference_mode():
        after = model(input_ids=ids).logits.float()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(after, before, atol=tolerance, rtol=tolerance)
    assert _greedy(model, ids) == tokens_before


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_tied_head_is_reordered_as_a_copy_and_tied_again_when_unpacked(dtype):
    model = _model("qwen3", dtype)
    embeddings = model.get_input_embeddings().weight
    assert model.lm_head.weight is embeddings
    ids = torch.randint(5, model.config.vocab_size, (1, 21), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        before = model(input_ids=ids).logits.float()
    tokens_before = _greedy(model, ids)
    bytes_before = weight_bytes(model)

    prepack_linears(model, copy_tied_head=True)
    assert isinstance(model.lm_head, PrepackedLinear) and model.lm_head.copied
    assert model.get_input_embeddings().weight is embeddings  # the table stays for the lookups
    assert weight_bytes(model) == bytes_before  # the copy stands in for the table a step reads once
    with torch.inference_mode():
        after = model(input_ids=ids).logits.float()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(after, before, atol=tolerance, rtol=tolerance)
    assert _greedy(model, ids) == tokens_before

    unpack_linears(model)
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight is embeddings


def test_the_tied_head_is_copied_only_where_memory_allows():
    model = _model("llama", torch.float32)
    size_mb = model.lm_head.weight.numel() * 4 / 2**20
    assert tied_head_copy(model, 64.0)[0]
    copy, why = tied_head_copy(model, size_mb * 7 / 1024)  # the copy would be more than an eighth
    assert not copy and f"({size_mb:.0f} MB) would take more than an eighth" in why
    assert not tied_head_copy(model, None)[0]
    assert tied_head_copy(_model("mistral", torch.float32), 64.0) == (False, "no tied head")


def test_unpacking_restores_every_weight_exactly():
    model = _model("mistral", torch.float32)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    count = prepack_linears(model)
    assert count > 0 and not any(type(m) is torch.nn.Linear for m in model.model.layers.modules())
    assert unpack_linears(model) == count
    assert not any(isinstance(m, PrepackedLinear) for m in model.modules())
    restored = model.state_dict()
    assert restored.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(restored[key], value), key


def test_what_cannot_be_reordered_says_why():
    model = _model("llama", torch.float16)
    assert "float16" in why_not_prepacked(model)
    assert why_not_prepacked(torch.nn.Module()) == "the model has no parameters"


def test_the_served_model_is_reordered_and_says_so(tiny_model_dir):
    from neural_chat_app import PipelineConfig
    from neural_chat_app.loading import compute_line, load_backend

    backend = load_backend(PipelineConfig(model_name_or_path=str(tiny_model_dir)))
    packed = sum(isinstance(m, PrepackedLinear) for m in backend.model.modules())
    assert packed == 2 * 7 + 1  # q, k, v, o, gate, up, down in each of 2 layers, and the tied head's copy
    assert backend.model.lm_head.copied  # the tiny model's head is far below an eighth of the memory here
    assert f"{packed} linear layers reordered for oneDNN" in compute_line(backend)
    reference = _greedy_reference(tiny_model_dir)
    ids = torch.tensor([reference[0]])
    assert _greedy(backend.model, ids, n=len(reference[1])) == reference[0] + reference[1]


def _greedy_reference(folder):
    """Greedy tokens of the plain transformers model, loaded as the backend loads it (fp32 by default)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = list(range(5, 30))
    return prompt, _greedy(model, torch.tensor([prompt]), n=10)[len(prompt):]


@pytest.mark.skipif(not BF16, reason="this CPU has no oneDNN bf16 linear (no AVX512-BF16, AMX or AVX-NE-CONVERT)")
def test_prompts_compute_in_fp32_over_the_plain_weights_and_decode_steps_on_the_reordered_ones(monkeypatch):
    """plain_for_prompts: a call of more than PROMPT_ROWS rows is the fp32 product of the bf16 values (rounded to
    bf16), fewer rows run the reordered weight; the model's logits and greedy tokens stay those of bf16, a decode
    step reads the same bytes, and unpacking gives back the plain weights (the tied head: the embeddings)."""
    import torch.nn.functional as F

    from neural_chat_app import prepacked

    model = _model("qwen3", torch.bfloat16)  # a tied head
    ids = torch.randint(5, model.config.vocab_size, (1, 3 * prepacked.PROMPT_ROWS),
                        generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        before = model(input_ids=ids).logits.float()
    tokens_before = _greedy(model, ids)
    bytes_before = weight_bytes(model)
    plain = {name: m.weight for name, m in model.named_modules() if type(m) is torch.nn.Linear}

    prepack_linears(model, copy_tied_head=True, plain_for_prompts=True)
    assert weight_bytes(model) == bytes_before  # the plain copy is read by prompts only
    embeddings = model.get_input_embeddings().weight
    assert model.lm_head.copied and model.lm_head.prompt_weight.data_ptr() == embeddings.data_ptr()
    layer = model.model.layers[0].mlp.down_proj
    assert layer.prompt_weight.data_ptr() == plain["model.layers.0.mlp.down_proj"].data_ptr()

    widened = []
    real = prepacked.widened_linear
    monkeypatch.setattr(prepacked, "widened_linear", lambda x, *rest: widened.append(x.shape) or real(x, *rest))
    x = torch.randn(1, prepacked.PROMPT_ROWS + 1, layer.in_features).to(torch.bfloat16)
    with torch.inference_mode():
        long = layer(x)
        assert widened == [x.shape] and long.dtype == torch.bfloat16
        assert torch.equal(long, F.linear(x.float(), layer.prompt_weight.float()).to(torch.bfloat16))
        widened.clear()
        short = layer(x[:, : prepacked.PROMPT_ROWS])
        assert widened == []  # a decode step, or a short prompt: the reordered weight
        torch.testing.assert_close(short, long[:, : prepacked.PROMPT_ROWS], atol=2e-2, rtol=2e-2)
        after = model(input_ids=ids).logits.float()
    assert widened  # the whole prompt went through fp32
    torch.testing.assert_close(after, before, atol=2e-2, rtol=2e-2)
    assert _greedy(model, ids) == tokens_before

    unpack_linears(model)
    assert model.lm_head.weight is embeddings
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, plain["model.layers.0.mlp.down_proj"])
