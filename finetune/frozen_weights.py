"""Frozen weights stored in bf16 and computed in fp32: training and serving on a CPU without bf16 matmuls.

A CPU without bf16 instructions computes in fp32, where an 8B model's weights alone are 32 GB. Weights that do not
train (LoRA's base, a served model) can stay in bf16 (16 GB) and be widened to fp32 one layer at a time, for that
layer's matmul only. bf16 to fp32 is exact, so the results are those of an fp32 model holding the same values.

Each thread widens into one reused buffer of at most WIDEN_BLOCK_BYTES: with glibc's malloc (build_chatbot called
from Python) a fresh fp32 copy of a large weight pays its page faults on every call. Measured on the 2-core AMD EPYC
Zen 4, a [14336 x 4096] weight: 104 ms fresh, 13 ms into the reused buffer. tcmalloc, which `python -m finetune`
preloads, keeps freed memory for the next copy: a LoRA step of the 1B shape in fp32 measured the same either way
(30.3 and 29.6 useful tokens/s, oneDNN, ATen and MKL capped at AVX2). A weight larger than the block (an 8B model's
head) is widened and multiplied a block of rows at a time.

Serving (`narrow_rows`): a decode step multiplies one row by every weight, which is bound by reading the weights,
and ATen's bf16 matrix-vector kernel accumulates in fp32 and needs no bf16 instructions. It reads half the bytes
of fp32 and skips the widening. Measured on that EPYC with oneDNN, ATen and MKL capped at AVX2 (an emulation, not
an AVX2-only CPU), a [8192 x 2048] weight: 1 row 0.86 ms in bf16 against 1.30 ms in fp32 reordered for oneDNN and
9.5 ms widened; 16 rows 12.4 ms against 18.9 widened; 64 rows 61 ms against 31 widened. So rows up to NARROW_ROWS
run in bf16 (the input rounded to bf16, the sum in fp32); more rows (a prompt) are widened.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F

WIDEN_BLOCK_BYTES = 256 * 2**20  # an 8B model's largest layer weight in fp32 is 224 MiB: one block
NARROW_ROWS = 16

_buffers = threading.local()


def _widened(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight` in `dtype`, in this thread's reused buffer: valid until this thread's next call."""
    buffer = getattr(_buffers, str(dtype), None)
    if buffer is None or buffer.numel() < weight.numel():
        # a normal tensor even when first made under inference_mode, so that training can reuse it afterwards
        with torch.inference_mode(False):
            buffer = torch.empty(weight.numel(), dtype=dtype)
        setattr(_buffers, str(dtype), buffer)
    return buffer[: weight.numel()].view(weight.shape).copy_(weight)


def _row_blocks(weight: torch.Tensor, dtype: torch.dtype) -> list[tuple[int, int]]:
    rows = max(1, WIDEN_BLOCK_BYTES // (weight.shape[1] * dtype.itemsize))
    return [(start, min(start + rows, weight.shape[0])) for start in range(0, weight.shape[0], rows)]


def widened_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   dtype: torch.dtype) -> torch.Tensor:
    """F.linear(x, weight, bias) computed in `dtype` over a weight stored narrower."""
    x = x.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    blocks = _row_blocks(weight, dtype)
    if len(blocks) == 1:
        return F.linear(x, _widened(weight, dtype), bias)
    out = x.new_empty(*x.shape[:-1], weight.shape[0])
    for start, end in blocks:
        out[..., start:end] = F.linear(x, _widened(weight[start:end], dtype),
                                       None if bias is None else bias[start:end])
    return out


def widened_input_grad(grad: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """grad @ weight (the gradient of a linear layer's input) computed in `dtype`."""
    grad = grad.to(dtype)
    blocks = _row_blocks(weight, dtype)
    if len(blocks) == 1:
        return grad @ _widened(weight, dtype)
    out = None
    for start, end in blocks:
        part = grad[..., start:end] @ _widened(weight[start:end], dtype)
        out = part if out is None else out.add_(part)
    return out


class _WidenedLinear(torch.autograd.Function):
    """F.linear in `dtype` over a frozen weight stored narrower: the wide copy lives for one matmul and the
    backward widens the stored weight again (autograd would otherwise keep every layer's wide copy)."""

    @staticmethod
    def forward(ctx, x, weight, bias, dtype):
        ctx.save_for_backward(weight)
        ctx.dtype = dtype
        return widened_linear(x, weight, bias, dtype)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_x = widened_input_grad(grad, weight, ctx.dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None


def _widened_forward(self, x):
    return _WidenedLinear.apply(x, self.weight, self.bias, self._compute_dtype)


def _narrow_rows_forward(self, x):
    """Serving: a few rows (a decode step) in the stored precision, accumulated in fp32; more rows widened."""
    if x.numel() <= NARROW_ROWS * x.shape[-1]:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(self._compute_dtype)
    return widened_linear(x, self.weight, self.bias, self._compute_dtype)


def _widen_output(module, args, output):
    return output.to(module._compute_dtype)


def compute_frozen_in(model, dtype: torch.dtype = torch.float32, narrow_rows: bool = False) -> Callable[[], None]:
    """Make every frozen Linear of `model` whose weights are stored narrower than `dtype` compute in `dtype`, and
    the input embeddings hand `dtype` to the first layer. The other frozen parameters (norms, the short
    convolutions of LFM2's and Qwen 3.5's stateful layers, their gates) are stored in `dtype`: a convolution does
    not promote its input as a norm's product does, and a bf16 conv weight met fp32 input and raised (LFM2, oneDNN
    capped at AVX2); they are a few thousand values a layer. Embedding tables stay as stored (a lookup's output is
promoted where it meets fp32). Trainable layers (LoRA adapters) are left alone. With
    `narrow_rows` (serving, no gradients), calls of up to NARROW_ROWS rows compute in the stored precision.
    Returns the undo."""
    forward = _narrow_rows_forward if narrow_rows else _widened_forward
    switched, hooks, widened = [], [], []
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (type(module) is torch.nn.Linear and not weight.requires_grad and weight.dtype != dtype
                and weight.dtype.is_floating_point):
            module._compute_dtype = dtype
            module.forward = types.MethodType(forward, module)
            switched.append(module)
        elif not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):  # Gemma 4's per-layer tables are large
            for param in module.parameters(recurse=False):
                if not param.requires_grad and param.dtype.is_floating_point and param.dtype != dtype:
                    widened.append((param, param.dtype))
                    param.data = param.data.to(dtype)
    if embeddings is not None and embeddings.weight.dtype != dtype:
        embeddings._compute_dtype = dtype
        hooks.append(embeddings.register_forward_hook(_widen_output))

    def undo() -> None:
        for module in switched:
            del module.forward
        for hook in hooks:
            hook.remove()
        for param, stored in widened:
            param.data = param.data.to(stored)

    return undo
