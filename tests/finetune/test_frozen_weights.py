"""bf16-stored weights computed in fp32: exact against the widened weight, a buffer reused per thread and bounded,
decode rows on the bf16 weights when serving, and every family served that way close to its fp32 model."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from finetune import frozen_weights
from finetune.frozen_weights import NARROW_ROWS, compute_frozen_in, widened_input_grad, widened_linear
from tests.families import NAMES, build_family_model, family_tokenizer


def _weights(rows=96, cols=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * 0.1).bfloat16(), (torch.randn(rows, generator=g) * 0.1).bfloat16()


@pytest.mark.parametrize("block_rows", [None, 32, 7])  # the whole weight; blocks that divide it; ragged blocks
def test_widened_linear_and_its_input_gradient_are_the_fp32_ones(monkeypatch, block_rows):
    weight, bias = _weights()
    if block_rows:
        monkeypatch.setattr(frozen_weights, "WIDEN_BLOCK_BYTES", block_rows * weight.shape[1] * 4)
    x = torch.randn(3, 5, weight.shape[1])
    out = widened_linear(x, weight, bias, torch.float32)
    assert out.dtype == torch.float32 and out.shape == (3, 5, weight.shape[0])
    exact = 0 if block_rows is None else 1e-6  # a narrower GEMM may pick another kernel, summing in another order
    torch.testing.assert_close(out, F.linear(x, weight.float(), bias.float()), rtol=exact, atol=exact)
    grad = torch.randn(3, 5, weight.shape[0])
    torch.testing.assert_close(widened_input_grad(grad, weight, torch.float32), grad @ weight.float(),
                               rtol=1e-6, atol=1e-6)  # blocks sum in another order


def test_one_buffer_per_thread_reused_and_bounded(monkeypatch):
    monkeypatch.setattr(frozen_weights, "WIDEN_BLOCK_BYTES", 32 * 40 * 4)
    monkeypatch.setattr(frozen_weights, "_buffers", threading.local())
    big, _ = _weights(96, 40)
    small, _ = _weights(16, 40, seed=1)
    widened_linear(torch.randn(2, 40), big, None, torch.float32)
    buffer = frozen_weights._buffers.__dict__[str(torch.float32)]
    assert buffer.numel() == 32 * 40  # one block of the 96-row weight, not the whole of it
    widened_linear(torch.randn(2, 40), small, None, torch.float32)
    assert frozen_weights._buffers.__dict__[str(torch.float32)] is buffer

    seen, results = [], []

    def other_thread():
        x = torch.randn(4, 40)
        results.append(torch.equal(widened_linear(x, big, None, torch.float32), F.linear(x, big.float())))
        seen.append(frozen_weights._buffers.__dict__[str(torch.float32)])

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert results == [True] and seen[0] is not buffer


def test_a_buffer_made_while_serving_serves_training_after():
    """Made under inference_mode first (a chat in the same process), the buffer is still a normal tensor that a
    training step's forward can write into and autograd can run through."""
    frozen_weights._buffers.__dict__.clear()
    linear = torch.nn.Linear(40, 24, bias=False).requires_grad_(False).to(torch.bfloat16)
    compute_frozen_in(linear_holder := torch.nn.Sequential(linear), torch.float32)
    with torch.inference_mode():
        linear_holder(torch.randn(32, 40))
    x = torch.randn(32, 40, requires_grad=True)
    linear_holder(x).sum().backward()
    torch.testing.assert_close(x.grad, linear.weight.float().sum(0).expand(32, -1))


def test_serving_runs_decode_rows_on_the_bf16_weights_and_prompts_widened():
    linear = torch.nn.Linear(40, 96).requires_grad_(False).to(torch.bfloat16)
    holder = torch.nn.Sequential(linear)
    compute_frozen_in(holder, torch.float32, narrow_rows=True)
    weight, bias = linear.weight, linear.bias
    with torch.inference_mode():
        for rows in (1, NARROW_ROWS):
            x = torch.randn(1, rows, 40)
            out = holder(x)
            assert out.dtype == torch.float32
            assert torch.equal(out, F.linear(x.bfloat16(), weight, bias).float())
        x = torch.randn(1, NARROW_ROWS + 1, 40)
        assert torch.equal(holder(x), F.linear(x, weight.float(), bias.float()))


@pytest.mark.parametrize("family", NAMES)
def test_every_family_served_from_bf16_weights_matches_its_fp32_model(family):
    """The prompt's logits are the fp32 model's (the bf16 values widened exactly); a decode step's, computed on the
    bf16 weights with fp32 sums, stay within bf16 rounding of them; the model generates."""
    tokenizer = family_tokenizer(family)
    narrow = build_family_model(family, tokenizer).eval().requires_grad_(False)
    for param in narrow.parameters():  # the weights only: the rotary buffer stays fp32, as a bf16 load keeps it
        param.data = param.data.to(torch.bfloat16)
    wide = build_family_model(family, tokenizer).eval()
    wide.load_state_dict({k: v.float() for k, v in narrow.state_dict().items()})
    compute_frozen_in(narrow, torch.float32, narrow_rows=True)
    ids = torch.randint(5, len(tokenizer), (1, NARROW_ROWS + 9), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        prompt, reference = narrow(input_ids=ids).logits, wide(input_ids=ids).logits
        assert prompt.dtype == torch.float32
        torch.testing.assert_close(prompt, reference, rtol=1e-4, atol=1e-4)
        cache = narrow(input_ids=ids[:, :-1], use_cache=True).past_key_values
        step = narrow(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True).logits[0, -1]
        assert (step - reference[0, -1]).abs().max() < 0.05 * reference[0, -1].abs().max()
        out = narrow.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                              min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + 4
    assert all(p.dtype == torch.bfloat16 for p in narrow.parameters() if p.ndim == 2)


@pytest.mark.parametrize("narrow_rows", [False, True])  # training; serving
def test_a_model_with_short_convolutions_runs_from_bf16_weights_in_fp32(narrow_rows):
    """LFM2's (and Qwen 3.5's) stateful layers hold a convolution: with bf16 weights and fp32 input it raised
    "Input type (torch.FloatTensor) and weight type (CPUBFloat16Type) should be the same" on a CPU without bf16
    (oneDNN capped at AVX2). Its logits now equal those of the fp32 model holding the same values."""
    from tests.conftest import build_tiny_tokenizer
    from tests.test_new_families import _lfm2

    reference = _lfm2(build_tiny_tokenizer()).bfloat16().float().eval()
    model = _lfm2(build_tiny_tokenizer()).bfloat16().requires_grad_(False).eval()
    undo = compute_frozen_in(model, torch.float32, narrow_rows=narrow_rows)
    ids = torch.tensor([[5, 9, 17, 33, 40, 2, 7, 11] * 3])  # 24 rows: widened, not run on the bf16 weights
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
    undo()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
