"""Pure-tensor reference quantization: round-trip error bounded by half a step, and agreement with GGUF Q8_0.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/quantize/test_reference.py
"""

from __future__ import annotations

import pytest
import torch

from quantize.reference import dequantize_tensor, max_roundtrip_error, quantize_tensor, quantized_bytes


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [-1, 32, 64])
@pytest.mark.parametrize("sym", [True, False])
def test_roundtrip_error_is_at_most_half_a_step(bits, group_size, sym):
    weight = torch.randn(48, 128) * 0.05
    qt = quantize_tensor(weight, bits=bits, group_size=group_size, sym=sym)
    error = (dequantize_tensor(qt) - weight).abs()
    bound = max_roundtrip_error(qt) + 1e-6
    assert (error <= bound).all()
    levels = 2**bits
    assert int(qt.q.int().max()) - int(qt.q.int().min()) < levels


def test_more_bits_and_smaller_groups_mean_less_error():
    weight = torch.randn(64, 256)
    def err(bits, group):
        return (dequantize_tensor(quantize_tensor(weight, bits, group)) - weight).pow(2).mean().item()
    assert err(8, 64) < err(4, 64) / 50
    assert err(4, 32) < err(4, 128) < err(4, -1)


def test_constant_and_zero_rows_survive():
    weight = torch.zeros(4, 64)
    weight[1] = 0.5
    out = dequantize_tensor(quantize_tensor(weight, 4, 32, sym=False))
    assert torch.allclose(out, weight, atol=1e-6)


def test_bad_bits_and_groups_are_refused():
    weight = torch.randn(8, 96)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        quantize_tensor(weight, bits=3)
    with pytest.raises(ValueError, match="group_size 64 does not divide the row length 96"):
        quantize_tensor(weight, bits=4, group_size=64)
    with pytest.raises(ValueError, match="2-D"):
        quantize_tensor(torch.randn(96), bits=4, group_size=32)


def test_packed_size_formula():
    # 4 bits per weight plus an fp16 scale per 64 weights (sym): 4.25 bits per weight.
    assert quantized_bytes((576, 576), 4, 64, sym=True) == 576 * 576 // 2 + 576 * 9 * 2
    assert quantized_bytes((10, 64), 8, -1, sym=False) == 640 + 10 * 3


def test_reference_matches_gguf_q8_0():
    """GGUF Q8_0 is symmetric INT8 in blocks of 32 with an fp16 scale: the same grid as the reference."""
    gguf = pytest.importorskip("gguf")
    weight = torch.randn(16, 128)
    ours = dequantize_tensor(quantize_tensor(weight, bits=8, group_size=32, sym=True))
    qtype = gguf.GGMLQuantizationType.Q8_0
    theirs = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(weight.numpy(), qtype), qtype)).float()
    step = weight.abs().reshape(16, -1, 32).amax(-1) / 127
    assert ((ours - theirs).abs().reshape(16, -1, 32) <= step[..., None] * 1.01 + 1e-6).all()
    assert (ours - theirs).abs().mean() < 0.05 * step.mean()
