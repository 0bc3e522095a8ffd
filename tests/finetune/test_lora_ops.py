"""The fused LoRA forward computes what PEFT's computes, with the same gradients, and falls back where it must.

pytest tests/finetune/test_lora_ops.py
"""

import torch

from finetune.lean_ops import use_lean_ops
from finetune.lora_ops import fuse_lora_forward
from tests.conftest import build_tiny_llama, build_tiny_tokenizer


def _lora_model(dropout: float = 0.0, dtype=torch.float32):
    from peft import LoraConfig, get_peft_model

    tokenizer = build_tiny_tokenizer()
    base = build_tiny_llama(tokenizer).to(dtype)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear"))
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = torch.randn_like(param, dtype=torch.float32) * 0.1  # B starts at zero: make it count
    return model, len(tokenizer)


def _batch(vocab: int):
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (2, 17), generator=gen)
    return {"input_ids": ids, "labels": ids.clone()}


def _loss_and_grads(model, batch, autocast: bool = False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def _fused_layers(model) -> int:
    return sum("forward" in vars(m) for m in model.modules() if type(m).__name__ == "Linear" and hasattr(m, "lora_A"))


def test_fused_forward_equals_peft_in_fp32_and_switches_back():
    model, vocab = _lora_model()
    batch = _batch(vocab)
    ref_loss, ref_grads = _loss_and_grads(model, batch)
    undo = fuse_lora_forward(model)
    assert _fused_layers(model) == 2 * 7  # q k v o gate up down in each of the 2 layers
    loss, grads = _loss_and_grads(model, batch)
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and len(grads) == 2 * 2 * 7
    for name, grad in grads.items():
        assert torch.allclose(grad, ref_grads[name], atol=1e-6, rtol=1e-5), name
    undo()
    assert _fused_layers(model) == 0
    assert torch.allclose(model(**batch).loss.detach(), ref_loss, atol=1e-6)


def test_fused_forward_under_bf16_autocast_with_lean_ops_trains_like_peft():
    model, vocab = _lora_model(dtype=torch.bfloat16)  # frozen base in bf16, adapters in fp32: our CPU recipe
    batch = _batch(vocab)
    _, undo_lean = use_lean_ops(model.get_base_model())
    ref_loss, ref_grads = _loss_and_grads(model, batch, autocast=True)
    undo = fuse_lora_forward(model)
    loss, grads = _loss_and_grads(model, batch, autocast=True)
    undo()
    undo_lean()
    assert abs(loss.item() - ref_loss.item()) < 0.01 * ref_loss.item()
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name  # the adapters' gradients stay in their own dtype
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), ref_grads[name].flatten(), dim=0)
        assert cosine > 0.99, (name, cosine.item())


def test_disabled_and_merged_adapters_take_peft_own_path():
    plain, vocab = _lora_model()
    batch = _batch(vocab)
    with plain.disable_adapter():
        reference_disabled = plain(**batch).loss.detach()
    fuse_lora_forward(plain)
    with plain.disable_adapter():
        assert torch.allclose(plain(**batch).loss.detach(), reference_disabled, atol=1e-6)
    assert not torch.allclose(reference_disabled, plain(**batch).loss.detach(), atol=1e-4)  # adapters count
    fused_loss = plain(**batch).loss.detach()
    plain.merge_adapter()
    assert torch.allclose(plain(**batch).loss.detach(), fused_loss, atol=1e-4)  # merged: applied once, not twice
    plain.unmerge_adapter()
    assert torch.allclose(plain(**batch).loss.detach(), fused_loss, atol=1e-5)


def test_dropout_is_fused_draw_for_draw():
    model, vocab = _lora_model(dropout=0.5)
    batch = _batch(vocab)
    model.train()
    torch.manual_seed(7)
    reference, reference_grads = _loss_and_grads(model, batch)
    fuse_lora_forward(model)
    assert _fused_layers(model) == 2 * 7
    torch.manual_seed(7)
    loss, grads = _loss_and_grads(model, batch)
    assert torch.allclose(loss, reference, atol=1e-6)
    for name, grad in grads.items():
        assert torch.allclose(grad, reference_grads[name], atol=1e-6, rtol=1e-5), name
    torch.manual_seed(8)  # another draw, another loss: dropout is applied, not skipped
    assert not torch.allclose(_loss_and_grads(model, batch)[0], reference, atol=1e-4)
