"""Training ops that keep less for the backward pass: RMSNorm, the SiLU-gated MLP product, the output head's loss.

Saved activations are what a CPU fine-tune spends its memory on (SmolLM2-135M, LoRA, bf16: about 0.93 MB per
token of the batch, measured with autograd's saved-tensor hooks). Three ops of the Llama-family layer keep far more
than they need:
- RMSNorm keeps its input in fp32 several times over (4.6 KB per token per norm at hidden 576); this one keeps the
  bf16 input and one fp32 scale per token (1.2 KB) and recomputes the rest, in fewer passes than autograd's chain
  of elementwise ops (fwd+bwd 3.0 vs 4.0 ms at 1500 x 576 on 2 cores), with the same forward output bit for bit;
- silu(gate) * up keeps gate, silu(gate) and up; this one keeps gate and up and recomputes silu in the backward;
- the loss over a 49152-word vocabulary materialises bf16 logits, their fp32 copy and fp32 log-probabilities for
  every kept position; `head_loss` runs the head and the loss in chunks of 256 positions and computes the gradient
  as it goes, in one fp32 buffer per chunk, so only one chunk of logits exists at a time.

Outputs that are cheap to recompute are not kept at all: the RMSNorm output (what the q/k/v and gate/up
projections, adapters included, would save), the MLP product silu(gate) * up (what the down projection would
save) and, with finetune.packed_attention, the attention output in the layout o_proj reads are rebuilt in the
backward from tensors autograd keeps anyway (the norm's input and scale, gate and up, SDPA's own outputs), bit
for bit (`rebuildable`). That is 3,264 of the 9,024 values a SmolLM2 layer kept per token, for a few elementwise
passes. Measured with the training benchmark's batches (SmolLM2-135M LoRA, batch 4 chats of up to 512 tokens,
2 cores, 20 steps, a scratch script beside `python -m benchmarks train`): peak RSS 2.42 -> 1.95 GB with the head
buffer above, at the same speed within the run-to-run spread (657-667 vs 651-663 useful tok/s).

`use_lean_ops(model)` switches the modules it knows (same formula as transformers' own, checked by class name) and
returns a function that switches them back. Models it does not know train unchanged.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F

from finetune.families import transforms_its_logits
from finetune.formatting import IGNORE_INDEX

# Classes whose forward is exactly transformers' LlamaRMSNorm / LlamaMLP (with a SiLU activation).
_RMSNORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Ministral3RMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm",
             "GraniteRMSNorm"}
_MLPS = {"LlamaMLP", "MistralMLP", "Ministral3MLP", "Qwen2MLP", "Qwen3MLP", "Qwen3_5MLP", "GraniteMLP"}
HEAD_CHUNK = 256


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = x.float()  # x itself when x is fp32: nothing below writes into it
        scale = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, scale)
        ctx.mark_non_differentiable(scale)
        return _normed(xf, weight, scale, x.dtype), scale

    @staticmethod
    def backward(ctx, grad, _grad_scale):
        x, weight, scale = ctx.saved_tensors
        normed = x.float() * scale
        grad_normed = grad.float() * weight.float()
        grad_x = grad_normed.sub_(normed * (grad_normed * normed).mean(-1, keepdim=True)).mul_(scale)
        grad_weight = None
        if ctx.needs_input_grad[1]:  # full fine-tuning
            grad_weight = (grad.float() * normed.to(x.dtype).float()).reshape(-1, x.shape[-1]).sum(0)
            grad_weight = grad_weight.to(weight.dtype)
        return grad_x.to(x.dtype), grad_weight, None


def _normed(xf, weight, scale, dtype):
    return weight * (xf * scale).to(dtype)


def _renormed(x, weight, scale):  # the forward's output again, from what its backward keeps
    return _normed(x.float(), weight, scale, x.dtype)


class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return _silu_product(gate, up)

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        return grad_gate, grad_up


def _silu_product(gate, up):
    return F.silu(gate) * up


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / rms(x)) computed in fp32 and returned in x's dtype, as transformers' LlamaRMSNorm."""
    out, scale = _RMSNorm.apply(x, weight, eps)
    rebuildable(out, _renormed, x, weight, scale)
    return out


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, keeping only gate and up for the backward."""
    out = _SiluMul.apply(gate, up)
    rebuildable(out, _silu_product, gate, up)
    return out


# --- rebuilding saved activations -----------------------------------------------------------------------------
# While a switched model runs its forward with gradients, every tensor autograd saves passes through _pack. A tensor
# that a lean op offered (the same memory: the op's output or a reshaped view of it) is replaced by the recipe that
# rebuilds it; the memory is freed once the forward lets go of it. Offers live only until that forward returns.
_offers: dict[int, tuple[weakref.ref, _Rebuild]] = {}
_rebuilding = [0]  # depth of switched forwards running: offers are taken only inside one


class _Rebuild:
    """One offered output: every op that saved it (q, k and v all save the norm output) shares one recomputation,
    which lives until the last of them has run its backward."""

    __slots__ = ("fn", "inputs", "value")

    def __init__(self, fn, inputs):
        self.fn, self.inputs, self.value = fn, inputs, None

    def get(self) -> torch.Tensor:
        if self.value is None:
            self.value = self.fn(*self.inputs)
        return self.value


def rebuildable(out: torch.Tensor, fn: Callable, *inputs: torch.Tensor) -> None:
    """Within a switched model's forward: if autograd would keep `out` (or a reshaped view of it), keep the recipe
    fn(*inputs) instead. fn must reproduce out bit for bit from tensors the backward keeps anyway, and nothing may
    change `out` or the inputs in place afterwards: autograd does not check tensors packed by hooks."""
    # An output that needs no gradient may still be saved: a trainable adapter keeps its frozen input.
    if _rebuilding[0] and torch.is_grad_enabled():
        key = out.data_ptr()

        def forget(ref):  # nothing saved `out` before it died: let go of its inputs now, not at the forward's end
            if _offers.get(key, (None,))[0] is ref:
                del _offers[key]

        _offers[key] = (weakref.ref(out, forget), _Rebuild(fn, inputs))


def _pack(t: torch.Tensor):
    offer = _offers.get(t.data_ptr())
    if offer is not None:
        out = offer[0]()
        # alive, so its memory cannot belong to another tensor; same values only for a contiguous view of it all
        if out is not None and t.dtype == out.dtype and t.numel() == out.numel() and t.is_contiguous():
            return offer[1], t.shape
    return t


def _unpack(saved):
    return saved[0].get().view(saved[1]) if isinstance(saved, tuple) else saved


def _rebuilding_forward(forward: Callable, model) -> Callable:
    def run(*args, **kwargs):
        # Gradient checkpointing frees each layer's activations as it goes: offers would hold them to the end.
        if not torch.is_grad_enabled() or getattr(model, "is_gradient_checkpointing", False):
            return forward(*args, **kwargs)
        _rebuilding[0] += 1
        try:
            with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
                return forward(*args, **kwargs)
        finally:
            _rebuilding[0] -= 1
            if not _rebuilding[0]:
                _offers.clear()

    return run


def _rmsnorm_forward(self, hidden_states):
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self, x):
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


def _compute_dtype(tensor: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device = tensor.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(tensor.dtype, weight.dtype)  # fp32 for a bf16-stored head of an fp32 run


class _HeadLoss(torch.autograd.Function):
    """Summed cross-entropy of (hidden @ weight.T) against labels, chunk by chunk, gradient computed in the forward
    (the loss is the graph's end, so the incoming gradient is a scalar that scales it in the backward)."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk, dtype):
        dtype = dtype or _compute_dtype(hidden, weight)
        w = weight.to(dtype)
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        narrow, wide = _chunk_buffers(chunk, w, dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start: start + chunk].to(dtype)
                target = labels[start: start + chunk]
                # One (chunk x vocabulary) fp32 buffer does all the work in place: logits, then exp(logits - max),
                # then the softmax and its gradient; every other temporary is a vector.
                rows = h.shape[0]
                probs = wide[:rows]
                torch.mm(h, w.T, out=narrow[:rows])
                if narrow is not wide:
                    probs.copy_(narrow[:rows])
                valid = target != IGNORE_INDEX
                safe = target.clamp(min=0).unsqueeze(1)
                target_logit = probs.gather(1, safe).squeeze(1)
                top = probs.amax(dim=-1, keepdim=True)
                sums = probs.sub_(top).exp_().sum(dim=-1, keepdim=True)
                lse = top.squeeze(1) + sums.log().squeeze(1)
                total += ((lse - target_logit) * valid).sum()
                if want_hidden or want_weight:
                    probs.div_(sums)
                    probs.scatter_add_(1, safe, -torch.ones_like(safe, dtype=probs.dtype))
                    probs.mul_(valid.unsqueeze(1))
                    grad_logits = narrow[:rows]
                    if narrow is not wide:
                        grad_logits.copy_(probs)
                    if want_hidden:
                        grad_hidden[start: start + chunk] = (grad_logits @ w).to(hidden.dtype)
                    if want_weight:
                        grad_weight.addmm_(grad_logits.T.float(), h.float())
        ctx.save_for_backward(*(t for t in (grad_hidden, grad_weight) if t is not None))
        ctx.want = (want_hidden, want_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        saved = iter(ctx.saved_tensors)
        grad_hidden = next(saved).mul(grad_total) if ctx.want[0] else None
        grad_weight = next(saved).mul(grad_total).to(ctx.weight_dtype) if ctx.want[1] else None
        return grad_hidden, grad_weight, None, None, None


# The head loss's two (chunk x vocabulary) buffers, kept from one step to the next: allocated fresh every step,
# their pages are faulted in again each time (llama-3.2-1b shape, 128,256 words, 2 AMX cores: the fp32 copy of a
# chunk's logits took 56 ms inside a training step against 8 ms into memory already touched).
_head_buffers: dict = {}


def _chunk_buffers(rows: int, weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits in `dtype`, fp32 work buffer), rows x vocabulary; one tensor for both when dtype is fp32. Always a
    whole chunk of rows, so that batches of varying length reuse them; only the latest shape is kept."""
    key = (rows, weight.shape[0], dtype, weight.device)
    if _head_buffers.get("key") != key:
        _head_buffers.clear()
        wide = torch.empty(rows, weight.shape[0], dtype=torch.float32, device=weight.device)
        narrow = wide if dtype == torch.float32 else torch.empty(rows, weight.shape[0], dtype=dtype,
                                                                   device=weight.device)
        _head_buffers.update(key=key, buffers=(narrow, wide))
    return _head_buffers["buffers"]


def _release_head_buffers() -> None:
    _head_buffers.clear()


def head_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int = HEAD_CHUNK,
              dtype: torch.dtype | None = None):
    """Summed cross-entropy of the output head (no bias) over positions whose label is not IGNORE_INDEX.

    `dtype`: the head's matmul dtype; None takes autocast's, else the promotion of hidden's and weight's. The
    Trainer calls its loss function outside autocast, with the hidden states in fp32 (accelerate converts a
    model's outputs), so the training loop passes its precision: without it, a bf16 run widened the bf16 head
    to fp32 every step and ran the largest matmuls of a step in fp32 (llama-3.2-1b shape, 1 Zen 4 core: the
    head's forward at 75 GFLOPS against 209 at the model's bf16 shapes, plus a 1 GB copy of the head)."""
    if not torch.is_grad_enabled():  # evaluation: the loss alone, no gradient (a trained head would ask for one)
        hidden, weight = hidden.detach(), weight.detach()
    return _HeadLoss.apply(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1).to(hidden.device), chunk,
                           dtype)


def _passthrough(self, hidden_states):
    return hidden_states


def _output_head(model) -> torch.nn.Linear | None:
    """The model's output head if it is a plain bias-free Linear (an adapted or quantized head computes its own
    logits and is left alone)."""
    if transforms_its_logits(getattr(model, "config", None)):  # the model applies it: keep its own head
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head if type(head) is torch.nn.Linear and head.bias is None else None


def use_lean_ops(model, head_in_loss: bool = False, rebuild: bool = True
                 ) -> tuple[torch.nn.Linear | None, Callable[[], None]]:
    """Switch the RMSNorm and MLP modules `model` has (of the classes above) to the lean ops and, with
    `head_in_loss`, make the model return its last hidden states in place of logits, for `head_loss` to project.
    With `rebuild`, the model's forward does not keep the norm outputs and MLP products for the backward (see
    above; not under gradient checkpointing, which recomputes whole layers).
    Only instance forwards change: the modules, and so every saved checkpoint, stay as they are.

    Returns the head the loss must apply (None: the model computes its own logits) and the undo."""
    switched = []
    for module in model.modules():
        name = type(module).__name__
        if name in _RMSNORMS and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_rmsnorm_forward, module)
            switched.append(module)
        elif name in _MLPS and getattr(getattr(module, "config", None), "hidden_act", None) == "silu":
            module.forward = types.MethodType(_mlp_forward, module)
            switched.append(module)
    head = _output_head(model) if head_in_loss else None
    if head is not None:
        head.forward = types.MethodType(_passthrough, head)
        switched.append(head)
    own_forward = vars(model).get("forward")  # an instance forward someone else set, restored by undo
    if rebuild and switched:
        model.forward = _rebuilding_forward(model.forward, model)

    def undo() -> None:
        _release_head_buffers()
        for module in switched:
            del module.forward  # back to the class's forward
        if rebuild and switched:
            if own_forward is None:
                del model.forward
            else:
                model.forward = own_forward

    return head, undo
