"""The lean training ops compute what transformers computes, keep less for the backward, and switch back.

pytest tests/finetune/test_lean_ops.py
"""

import weakref

import pytest
import torch
import torch.nn.functional as F

from finetune.collate import PaddingFreeCollator, kept_positions_loss
from finetune.formatting import IGNORE_INDEX
from finetune.lean_ops import head_loss, rms_norm, silu_mul, use_lean_ops
from finetune.packed_attention import use_packed_attention
from tests.conftest import build_tiny_llama, build_tiny_tokenizer
from tests.families import NAMES as FAMILY_NAMES
from tests.families import packed_loss


def _reference_rms_norm(x, weight, eps):  # transformers' LlamaRMSNorm.forward
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def _grads(fn, *inputs):
    for t in inputs:
        t.grad = None
    out = fn(*inputs)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(out.dtype))
    return out.detach(), [t.grad.clone() for t in inputs]


def test_rms_norm_matches_transformers_forward_bit_for_bit_and_backward():
    x = torch.randn(2, 7, 32, dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.rand(32) + 0.5).to(torch.bfloat16)
    assert torch.equal(rms_norm(x, weight, 1e-5), _reference_rms_norm(x, weight, 1e-5))
    # fp32 in, trainable weight (full fine-tuning): gradients of both inputs agree
    x32 = torch.randn(2, 7, 32, requires_grad=True)
    w32 = (torch.rand(32) + 0.5).requires_grad_(True)
    ours, ours_grads = _grads(lambda a, b: rms_norm(a, b, 1e-6), x32, w32)
    ref, ref_grads = _grads(lambda a, b: _reference_rms_norm(a, b, 1e-6), x32, w32)
    assert torch.allclose(ours, ref, atol=1e-6)
    for a, b in zip(ours_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    lean = _saved_bytes(lambda: rms_norm(x, weight, 1e-5))
    assert lean < _saved_bytes(lambda: _reference_rms_norm(x, weight, 1e-5)) / 2


def test_silu_mul_matches_and_keeps_only_its_inputs():
    gate = torch.randn(5, 48, requires_grad=True)
    up = torch.randn(5, 48, requires_grad=True)
    ours, ours_grads = _grads(silu_mul, gate, up)
    ref, ref_grads = _grads(lambda g, u: F.silu(g) * u, gate, up)
    assert torch.equal(ours, ref)
    for a, b in zip(ours_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-6)
    assert _saved_bytes(lambda: silu_mul(gate, up)) == 2 * gate.numel() * 4


@pytest.mark.parametrize("weight_trains", [False, True])
def test_head_loss_equals_cross_entropy_of_the_full_logits(weight_trains):
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=weight_trains)
    labels = torch.randint(0, 50, (37,))
    labels[[0, 5, 36]] = IGNORE_INDEX
    inputs = (hidden, weight) if weight_trains else (hidden,)

    def ours(*_):
        return head_loss(hidden, weight, labels, chunk=8)  # 5 chunks, the last one short

    def reference(*_):
        return F.cross_entropy(hidden @ weight.T, labels, ignore_index=IGNORE_INDEX, reduction="sum")

    loss, grads = _grads(ours, *inputs)
    ref_loss, ref_grads = _grads(reference, *inputs)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)
    with torch.no_grad():  # evaluation: the loss alone, nothing to differentiate even for a trained head
        loss = ours()
    assert torch.allclose(loss, ref_loss, rtol=1e-5) and not loss.requires_grad


def test_head_loss_reuses_its_chunk_buffers_across_batches_of_any_length():
    from finetune import lean_ops

    weight = torch.randn(50, 16)
    pointers = set()
    for rows in (37, 3, 21, 37):  # packed batches differ in length; 3 is fewer rows than one chunk
        hidden = torch.randn(rows, 16, requires_grad=True)
        labels = torch.randint(0, 50, (rows,))
        loss, (grad,) = _grads(lambda h, labels=labels: head_loss(h, weight, labels, chunk=8), hidden)
        ref_loss, (ref_grad,) = _grads(lambda h, labels=labels: F.cross_entropy(h @ weight.T, labels, reduction="sum"),
                                       hidden)
        assert torch.allclose(loss, ref_loss, rtol=1e-5) and torch.allclose(grad, ref_grad, atol=1e-5)
        pointers.add(lean_ops._head_buffers["buffers"][1].data_ptr())
    assert len(pointers) == 1  # one buffer for every step, not one per step
    narrow, wide = lean_ops._head_buffers["buffers"]
    assert narrow is wide and wide.shape == (8, 50)  # fp32: the logits are the work buffer
    model = build_tiny_llama(build_tiny_tokenizer())
    _, undo = use_lean_ops(model, head_in_loss=True)
    undo()
    assert not lean_ops._head_buffers  # switching back lets go of them


def test_bf16_head_loss_under_autocast_is_close_to_the_fp32_loss():
    hidden = torch.randn(20, 16, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.bfloat16)
    labels = torch.randint(0, 50, (20,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head_loss(hidden, weight, labels)
    loss.backward()
    reference = F.cross_entropy(hidden.detach().float() @ weight.float().T, labels, reduction="sum")
    assert hidden.grad.dtype == torch.bfloat16
    assert abs(loss.item() - reference.item()) < 0.02 * reference.item()


def _batch(boundaries: bool = False):
    examples = [
        {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [IGNORE_INDEX] * 3 + [8, 9, 10]},
        {"input_ids": [11, 12, 13, 14], "labels": [IGNORE_INDEX, 12, 13, 14]},
    ]
    return PaddingFreeCollator(boundaries=boundaries)(examples)


def test_a_model_on_lean_ops_trains_as_before_and_switches_back():
    model = build_tiny_llama(build_tiny_tokenizer())
    batch = _batch()
    labels = batch.pop("labels")

    def loss_and_grads(head=None):
        model.zero_grad()
        loss = kept_positions_loss(model(**batch), labels, head=head)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    reference, reference_grads = loss_and_grads()
    head, undo = use_lean_ops(model, head_in_loss=True)
    assert head is model.lm_head
    assert model(**batch).logits.shape[-1] == model.config.hidden_size  # hidden states reach the loss
    loss, grads = loss_and_grads(head)
    assert torch.allclose(loss, reference, atol=1e-5)
    for ours, ref in zip(grads, reference_grads):  # every weight trains (full fine-tuning), norms included
        assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-4)
    undo()
    assert model(**batch).logits.shape[-1] == model.config.vocab_size
    assert not any("forward" in vars(m) for m in (model.model.norm, model.model.layers[0].mlp, model.lm_head))


def test_lean_ops_keep_less_for_the_backward():
    """As in a LoRA run: frozen bf16 weights, a trainable input, bf16 autocast."""
    model = build_tiny_llama(build_tiny_tokenizer()).to(torch.bfloat16).requires_grad_(False)
    batch = _batch()
    labels = batch.pop("labels")
    embeds = model.get_input_embeddings()(batch.pop("input_ids")).requires_grad_(True)

    def saved(head=None):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return _saved_bytes(lambda: kept_positions_loss(model(inputs_embeds=embeds, **batch), labels, head=head))

    before = saved()
    # rebuild=False: rebuilt activations go through the lean ops' own saved-tensor hooks, which hide them from
    # _saved_bytes' (the innermost hooks win); the next test checks those
    head, _ = use_lean_ops(model, head_in_loss=True, rebuild=False)
    after = saved(head)
    assert after < 0.7 * before


def test_norm_outputs_mlp_products_and_attention_outputs_are_rebuilt_in_the_backward_not_kept():
    """A LoRA run as finetune_model sets it up: frozen bf16 weights, adapters on every linear, bf16 autocast,
    padding-free batches with one attention call per example."""
    from peft import LoraConfig, get_peft_model


    torch.manual_seed(0)
    model = build_tiny_llama(build_tiny_tokenizer()).to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False
    base = model.get_base_model()
    assert use_packed_attention(base)
    batch = _batch(boundaries=True)
    labels = batch.pop("labels")

    def step(rebuild: bool):
        head, undo = use_lean_ops(base, head_in_loss=True, rebuild=rebuild)
        # weak references to every norm output, MLP product and attention output (the input of o_proj); a view is
        # followed to the tensor that owns its memory, which any view autograd keeps keeps alive
        kept = []

        def keep(t):
            kept.append(weakref.ref(t if t._base is None else t._base))

        hooks = [norm.register_forward_hook(lambda m, i, o: keep(o))
                 for layer in base.model.layers for norm in (layer.input_layernorm, layer.post_attention_layernorm)]
        hooks += [proj.register_forward_pre_hook(lambda m, i: keep(i[0]))
                  for layer in base.model.layers for proj in (layer.mlp.down_proj, layer.self_attn.o_proj)]
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = kept_positions_loss(model(**batch), labels, head=head)
        alive = sum(ref() is not None for ref in kept)
        loss.backward()
        for hook in hooks:
            hook.remove()
        undo()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad], alive, len(kept)

    loss_kept, grads_kept, alive_kept, total = step(rebuild=False)
    loss, grads, alive, _ = step(rebuild=True)
    assert total == 4 * len(base.model.layers) and alive_kept == total  # without rebuilding, autograd keeps them
    assert alive == 0
    assert torch.equal(loss, loss_kept)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_kept))  # rebuilt bit for bit
    assert "forward" not in vars(base)  # undo restored the model's own forward


def test_unknown_or_adapted_heads_are_left_alone():
    model = build_tiny_llama(build_tiny_tokenizer())
    model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    head, _ = use_lean_ops(model, head_in_loss=True)
    assert head is None
    assert model(**_batch() | {"labels": None}).logits.shape[-1] == model.config.vocab_size


def test_rebuilding_lets_go_of_unkept_outputs_and_stands_aside_for_gradient_checkpointing():
    from finetune import lean_ops

    big = torch.randn(64, 64)
    offers_seen = []

    def forward():
        out = big * 2
        lean_ops.rebuildable(out, torch.mul, big, 2)
        offers_seen.append(len(lean_ops._offers))
        del out  # nothing saved it: its inputs are not held until the forward ends
        offers_seen.append(len(lean_ops._offers))

    class Model:
        is_gradient_checkpointing = False

    model = Model()
    lean_ops._rebuilding_forward(forward, model)()
    model.is_gradient_checkpointing = True  # checkpointed layers free their activations: offers would hold them
    lean_ops._rebuilding_forward(forward, model)()
    assert offers_seen == [1, 0, 0, 0]


def _granite(vocab: int):
    from transformers import AutoModelForCausalLM, GraniteConfig

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(GraniteConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, logits_scaling=4.0)).float()


def _family_pair(family: str):
    """The family's tiny model twice, same weights: on eager attention (transformers' reference, the only one that
    soft-caps Gemma 2's scores) and on SDPA (what training switches to the packed kernel)."""
    from tests.families import build_family_model, family_tokenizer

    if family == "granite":
        return _granite(len(build_tiny_tokenizer())), _granite(len(build_tiny_tokenizer()))
    tokenizer = family_tokenizer(family)
    reference = build_family_model(family, tokenizer, attn_implementation="eager")
    return reference, build_family_model(family, tokenizer)


@pytest.mark.parametrize("family", [*FAMILY_NAMES, "granite"])
def test_training_loss_equals_transformers_own_for_every_family(family):
    """Two examples of different lengths, longer than Gemma's test window (16), in one padding-free row with our
    lean ops and packed attention on: the loss equals transformers' own loss on the padded batch. Gemma 2/3
    soft-cap the head's logits, Granite scales them, Gemma 2 soft-caps attention scores and windows attention."""
    reference, model = _family_pair(family)
    examples = [list(range(5, 29)), list(range(40, 60))]
    labels = [[IGNORE_INDEX] * 6 + ids[6:] for ids in examples]
    width = max(map(len, examples))
    pad = lambda rows, value: torch.tensor([r + [value] * (width - len(r)) for r in rows])  # noqa: E731
    mask = pad([[1] * len(r) for r in examples], 0)
    with torch.no_grad():
        expected = reference(input_ids=pad(examples, 0), attention_mask=mask, labels=pad(labels, IGNORE_INDEX)).loss
    ours, head = packed_loss(model, examples, labels)
    assert (head is None) == (family in ("gemma2", "granite"))  # a transformed head is left alone
    assert abs(float(ours) - float(expected)) < 1e-3, (float(ours), float(expected))
