"""Pure-tensor reference quantization: what every backend does to a weight matrix, in a few readable lines.

Weight-only integer quantization of a [out, in] matrix, per output row (group_size=-1) or per group of
`group_size` consecutive input columns. Symmetric: q = round(w / s), s = max|w| / qmax, zero point 0.
Asymmetric: q = round(w / s) + z with s = (max - min) / (2^bits - 1), so the grid covers [min, max].
Tests check the round-trip error against the bound s / 2 per element; backends are checked against these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuantizedTensor:
    q: torch.Tensor  # [out, in]: int8 in [-2^(b-1), 2^(b-1)-1] (sym) or uint8 in [0, 2^b - 1] (asym)
    scale: torch.Tensor  # [out, n_groups]
    zero: torch.Tensor  # [out, n_groups], integer zero points (0 for symmetric)
    bits: int
    group_size: int  # -1: one group per row


def check_bits_and_group(weight: torch.Tensor, bits: int, group_size: int) -> int:
    """The group size actually used (the row length for -1); raise ValueError for bad bits or groups."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(weight.shape)}")
    columns = weight.shape[1]
    if group_size == -1:
        return columns
    if group_size <= 0 or columns % group_size:
        raise ValueError(f"group_size {group_size} does not divide the row length {columns}")
    return group_size


def quantize_tensor(weight: torch.Tensor, bits: int = 4, group_size: int = 64, sym: bool = False) -> QuantizedTensor:
    """Round-to-nearest quantization of `weight` (any float dtype) to `bits` per group."""
    group = check_bits_and_group(weight, bits, group_size)
    w = weight.detach().float().reshape(weight.shape[0], -1, group)
    if sym:
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax - 1
        scale = (w.abs().amax(dim=-1) / qmax).clamp(min=1e-12)
        zero = torch.zeros_like(scale)
    else:
        qmin, qmax = 0, 2**bits - 1
        low = w.amin(dim=-1).clamp(max=0.0)
        high = w.amax(dim=-1).clamp(min=0.0)
        scale = ((high - low) / qmax).clamp(min=1e-12)
        zero = torch.round(-low / scale).clamp(qmin, qmax)
    q = torch.clamp(torch.round(w / scale[..., None]) + zero[..., None], qmin, qmax)
    q = q.reshape(weight.shape).to(torch.int8 if sym else torch.uint8)
    return QuantizedTensor(q, scale, zero, bits, group_size)


def dequantize_tensor(qt: QuantizedTensor) -> torch.Tensor:
    """Float32 weights back from a QuantizedTensor."""
    out_features, columns = qt.q.shape
    group = columns if qt.group_size == -1 else qt.group_size
    q = qt.q.float().reshape(out_features, -1, group)
    return ((q - qt.zero[..., None]) * qt.scale[..., None]).reshape(out_features, columns)


def max_roundtrip_error(qt: QuantizedTensor) -> torch.Tensor:
    """The per-element bound on |w - dequant(quant(w))| for weights inside the grid: half a step, per group."""
    out_features, columns = qt.q.shape
    group = columns if qt.group_size == -1 else qt.group_size
    return (qt.scale / 2).repeat_interleave(group, dim=1).reshape(out_features, columns)


def quantized_bytes(shape: tuple[int, int], bits: int, group_size: int, sym: bool, scale_bytes: int = 2) -> int:
    """Bytes a packed weight takes: the integers plus one scale (and for asym a zero point) per group."""
    out_features, columns = shape
    groups = out_features * (1 if group_size == -1 else columns // group_size)
    zero_bytes = 0 if sym else bits / 8
    return int(out_features * columns * bits / 8 + groups * (scale_bytes + zero_bytes))
