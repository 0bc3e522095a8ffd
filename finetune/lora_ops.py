"""LoRA's update added in place into the frozen layer's output, in one matmul, instead of PEFT's three passes.

PEFT's `lora.Linear.forward` computes `result = result + lora_B(lora_A(dropout(x))) * scaling`: the low-rank
product comes out at full output size, is scaled into a second full-size tensor and added into a third. At the
llama-3.2-1b shape (2 AMX cores, bf16, batch of 149-token rows) those full-size passes (and their mirror images in
the backward) took about 0.1 s of a 2.39 s step, measured with torch.profiler; the matmuls themselves are small
(rank 8-16). Here the frozen output is the accumulator: `out.addmm_(low, B.T, alpha=scaling)` writes the update
into it, so one full-size tensor exists instead of three and autograd's backward of addmm gives the adapter's
gradients (scaled) without another full-size product.

Only the plain case is fused: one active adapter (with dropout or without: NeuralChat's default is 0.05), a plain
`torch.nn.Linear` base (an instance forward it has, e.g. `finetune.frozen_weights.compute_frozen_in`'s, is kept:
the base is called as a module), not merged, adapters enabled, no DoRA or other LoRA variant, no bias on lora_B,
and autocast on or the input already in the adapter's dtype. Anything else runs PEFT's own forward, checked on
every call, so a later `merge_adapter()` or `disable_adapter()` still behaves as PEFT documents.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch


def _plain(layer, x: torch.Tensor) -> bool:
    """Whether this call can be fused: PEFT would compute base(x) + B(A(dropout(x))) * scaling and nothing else."""
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return False
    name = layer.active_adapters[0]
    if name not in layer.lora_A or getattr(layer, "use_dora", {}).get(name, False):
        return False
    if name in getattr(layer, "lora_variant", {}) or layer.lora_B[name].bias is not None:
        return False
    # Outside autocast PEFT computes the update in the adapter's dtype (fp32 beside a bf16 base) and rounds the
    # sum once: only the same-dtype case is fused there.
    return torch.is_autocast_enabled(x.device.type) or x.dtype == layer.lora_A[name].weight.dtype


def _fused_forward(self, x, *args, **kwargs):
    if args or kwargs or not _plain(self, x):  # adapter_names=..., mixed batches and the rest: PEFT's own path
        return type(self).forward(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    lora_a, lora_b = self.lora_A[name], self.lora_B[name]
    flat = x.reshape(-1, x.shape[-1])
    out = self.base_layer(flat)
    # base first, then dropout: the random draws come in PEFT's order, so a seed gives the same run
    low = lora_a(self.lora_dropout[name](flat))  # under autocast: computed in the autocast dtype, like PEFT's
    # In-place ops are not autocast: cast both low-rank factors to the frozen output's dtype here.
    out.addmm_(low.to(out.dtype), lora_b.weight.to(out.dtype).t(), alpha=self.scaling[name])
    return out.view(*x.shape[:-1], out.shape[-1])


def fuse_lora_forward(model) -> Callable[[], None]:
    """Give every PEFT LoRA Linear of `model` whose base is a plain torch Linear the fused forward (an instance
    forward: the module, its state dict and saved adapters stay as they are). Returns the undo."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # no PEFT, no LoRA layers to fuse
        return lambda: None
    switched = []
    for module in model.modules():
        if (isinstance(module, LoraLinear) and type(module.get_base_layer()) is torch.nn.Linear
                and "forward" not in vars(module)):
            module.forward = types.MethodType(_fused_forward, module)
            switched.append(module)

    def undo() -> None:
        for module in switched:
            del module.forward

    return undo
