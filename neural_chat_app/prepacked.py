"""Serving weights reordered once for oneDNN: each nn.Linear of a CPU model becomes a PrepackedLinear.

`F.linear` hands oneDNN a plain row-major weight and leaves it to reorder or stream it in a layout its kernels do
not prefer, on every call. Reordering once at load time into the layout oneDNN's inner-product kernel reads (what
torch.compile's freezing pass and the archived Intel Extension for PyTorch do) makes decoding, where every step
reads every weight once, run closer to the memory bandwidth. Measured on the 2-core AMD EPYC Zen 4 (AVX512-BF16),
one decode step of the llama-3.2-1b shape in bf16: 172 ms -> 127 ms, identical tokens and logits; a [8192 x 2048]
weight at batch 1 went from 17.8 to 23.6 GB/s in bf16 and from 15.3 to 32.6 GB/s in fp32 (2.0x with AVX2 only,
where a 407-token prefill of that weight was 14% slower: replies are decode-bound, so fp32 is reordered too).
Ragged prefills gain as well: 407 tokens took 2.92 s before, 2.46 s after (408 tokens: 2.30 s, 2.25 s).

A weight shared with another module (a head tied to the embeddings) can only be reordered as a second copy, the
embeddings keeping the first: `prepack_linears(model, copy_tied_head=True)` makes that copy, which the loader does when
it costs at most an eighth of the available memory (`tied_head_copy`). On the 1B shape the tied [128256 x 2048]
head is a fifth of the weights and, left as it was, a third of the decode step once the rest was reordered: 25.9 ms
plain, 17.8 ms reordered, for 0.5 GB more memory. PEFT wraps nn.Linear layers only, so attaching a LoRA adapter
first turns them back (`unpack_linears`, exact: the reorder is a change of layout, not of values).

Prompts in fp32 (`plain_for_prompts`): where bf16 matmuls run slower than fp32 ones (AVX512-BF16 without AMX, as
finetune.hardware.matmul_precision measures), a layer also keeps its plain bf16 weight and computes calls of more
than PROMPT_ROWS rows (a prompt) in fp32 over it, widened into a reused buffer (finetune.frozen_weights); decode
steps keep the reordered bf16 weight. bf16 products are exact in fp32 and both paths sum in fp32, so only the order
of the sums differs. The reordered weight cannot be widened instead: turning it back took 15 ms for a [8192 x 2048]
weight against 2 ms to widen the plain one. Measured on the Emerald Rapids guest (AVX512-BF16, AMX hidden, 2 cores,
2026-12-08), a [8192 x 2048] weight, reordered bf16 against widened fp32: 64 rows 12.8 / 12.5 ms, 128 rows 25.8 /
19.1 ms, 512 rows 100 / 61 ms, 8 rows 1.7 / 6.0 ms. The llama-3.2-1b shape (`python -m benchmarks infer --shape
llama-3.2-1b`, batch 1, 512-token prompt): first token 6.4 s -> 4.1 s, decoding 8.1 -> 8.6 tokens/s, for one more
bf16 copy of the weights (the loader keeps it where it fits, neural_chat_app.memory).
"""

from __future__ import annotations

import torch

from finetune.frozen_weights import widened_linear

PROMPT_ROWS = 64  # more rows than this compute in fp32 over the plain weight, where it is kept


class PrepackedLinear(torch.nn.Module):
    """nn.Linear's forward on a weight held in oneDNN's own layout (an opaque mkldnn tensor of the same bytes)."""

    def __init__(self, linear: torch.nn.Linear, copied: bool = False, plain_for_prompts: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.copied = copied  # a copy of a weight that another module (the embeddings) keeps
        # batch 1: the decode step is the call that reads the whole weight for one row
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.register_buffer("packed_weight", packed, persistent=False)
        # a buffer, not a parameter: weight_bytes counts what a decode step reads
        self.register_buffer("prompt_weight", linear.weight.detach() if plain_for_prompts else None,
                             persistent=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prompt_weight is not None and x.numel() > PROMPT_ROWS * self.in_features:
            return widened_linear(x, self.prompt_weight, self.bias, torch.float32).to(x.dtype)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, self.bias, "none", [], "")

    def unpacked(self) -> torch.nn.Linear:
        """The nn.Linear this came from, with the same values."""
        if self.copied:
            raise ValueError("a reordered copy of a shared weight goes back by re-tying it (unpack_linears does)")
        weight = self.prompt_weight if self.prompt_weight is not None else self.packed_weight.to_dense()
        linear = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta",
                                 dtype=weight.dtype)
        linear.weight = torch.nn.Parameter(weight, requires_grad=False)
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def why_not_prepacked(model) -> str | None:
    """Why `model`'s linear layers cannot be reordered for oneDNN here; None when they can."""
    try:
        param = next(model.parameters())
    except StopIteration:
        return "the model has no parameters"
    if param.device.type != "cpu":
        return f"the model is on {param.device.type}, not the CPU"
    if param.dtype not in (torch.bfloat16, torch.float32):
        return f"its weights are {param.dtype}; oneDNN's linear takes bf16 or fp32"
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn)"
    if param.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "oneDNN has no bf16 linear on this CPU (it needs AVX512-BF16, AMX or AVX-NE-CONVERT)"
    return None


def tied_head(model) -> torch.nn.Linear | None:
    """`model`'s output head when it shares its weight with the input embeddings, else None."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    if type(head) is torch.nn.Linear and embeddings is not None and head.weight is embeddings.weight:
        return head
    return None


def tied_head_copy(model, available_gib: float | None) -> tuple[bool, str]:
    """Whether to reorder a tied head as a copy, and why: yes when the copy takes at most an eighth of the memory
    available (the rest is for the KV caches of the requests, other processes and the allocator's slack)."""
    head = tied_head(model)
    if head is None:
        return False, "no tied head"
    size = head.weight.numel() * head.weight.element_size()
    if available_gib is None or size > available_gib * 2**30 / 8:
        where = "an unknown amount of" if available_gib is None else f"{available_gib:.1f} GiB of"
        return False, (f"the tied head stays shared: its reordered copy ({size / 2**20:.0f} MB) would take more than "
                       f"an eighth of {where} available memory")
    return True, f"the tied head reordered as a copy ({size / 2**20:.0f} MB, {available_gib:.1f} GiB available)"


def prepack_linears(model, copy_tied_head: bool = False, plain_for_prompts: bool = False) -> int:
    """Replace each plain nn.Linear of `model` whose weight no other module shares by a PrepackedLinear, and with
    `copy_tied_head` the head tied to the embeddings too (as a copy); returns how many. `plain_for_prompts`: each
    keeps its plain weight too, for prompts computed in fp32. The caller checks `why_not_prepacked` first."""
    counts: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            counts[id(param)] = counts.get(id(param), 0) + 1
    head = tied_head(model) if copy_tied_head else None
    # names, not modules: a list of the modules would keep every replaced weight alive until the end (2x memory)
    names = [name for name, m in model.named_modules()
             if type(m) is torch.nn.Linear and (counts[id(m.weight)] == 1 or m is head)]
    del head
    for name in names:
        _replace(model, name, lambda linear: PrepackedLinear(linear, copied=counts[id(linear.weight)] > 1,
                                                             plain_for_prompts=plain_for_prompts))
    return len(names)


def unpack_linears(model) -> int:
    """Turn every PrepackedLinear of `model` back into an nn.Linear with the same values; returns how many."""
    names = [name for name, m in model.named_modules() if isinstance(m, PrepackedLinear)]
    copies = [name for name in names if model.get_submodule(name).copied]
    for name in names:
        if name in copies:  # the embeddings hold the weight: a plain head tied to it again
            packed = model.get_submodule(name)
            embeddings = model.get_input_embeddings()
            linear = torch.nn.Linear(packed.in_features, packed.out_features, bias=packed.bias is not None,
                                     device="meta", dtype=embeddings.weight.dtype)
            linear.weight, linear.bias = embeddings.weight, packed.bias
            _replace(model, name, lambda _, linear=linear: linear)
        else:
            _replace(model, name, lambda packed: packed.unpacked())
    return len(names)


def _replace(model, name: str, make) -> None:
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    setattr(parent, child_name, make(getattr(parent, child_name)))


def weight_bytes(model) -> int:
    """The bytes one decode step reads, counted as for the plain model: parameters (tied ones once) and the reordered
    weights (a tied head's copy stands in for the shared table, which a step reads one row of). A multimodal model's
    step reads its language model and head only, not its vision tower."""
    from finetune.families import text_decoder_prefix

    parts = [model]
    if text_decoder_prefix(model) is not None:
        parts = [model.get_decoder(), model.get_output_embeddings()]
    modules = {id(m): m for part in parts for m in part.modules()}.values()
    packed = sum(m.packed_weight.numel() * m.packed_weight.element_size() for m in modules
                 if isinstance(m, PrepackedLinear) and not m.copied)
    params = {id(p): p for m in modules for p in m.parameters(recurse=False)}.values()
    return packed + sum(p.numel() * p.element_size() for p in params)
