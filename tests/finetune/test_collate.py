"""Padding-free batches give the same logits and loss as separate, padded sequences.

pytest tests/finetune/test_collate.py
"""

import torch
import torch.nn.functional as F

from finetune.collate import PaddingFreeCollator, kept_positions_loss
from finetune.formatting import IGNORE_INDEX, pack_examples
from tests.conftest import build_tiny_llama, build_tiny_tokenizer


def _examples():
    return [
        {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [IGNORE_INDEX] * 3 + [8, 9, 10]},
        {"input_ids": [11, 12, 13], "labels": [IGNORE_INDEX, 12, 13]},
        {"input_ids": [20, 21, 22, 23, 24], "labels": [IGNORE_INDEX, IGNORE_INDEX, 22, 23, 24]},
    ]


def test_flattened_batch_attends_within_each_example_only():
    """transformers builds the block-diagonal mask from restarting position ids only without a KV cache."""
    model = build_tiny_llama(build_tiny_tokenizer()).eval()
    batch = PaddingFreeCollator()(_examples())
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       use_cache=False).logits[0]
        separate = torch.cat([model(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in _examples()])
    assert torch.allclose(packed, separate, atol=1e-5)


def test_kept_positions_loss_equals_the_standard_causal_lm_loss():
    model = build_tiny_llama(build_tiny_tokenizer()).eval()
    examples = _examples()
    batch = PaddingFreeCollator()(examples)
    with torch.no_grad():
        outputs = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                        logits_to_keep=batch["logits_to_keep"], use_cache=False)
        ours = kept_positions_loss(outputs, batch["labels"])
        # Reference: each example on its own, shifted cross-entropy averaged over all label tokens.
        total, count = 0.0, 0
        for e in examples:
            logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
            targets = torch.tensor(e["labels"][1:])
            total += F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
            count += int((targets != IGNORE_INDEX).sum())
    assert batch["labels"].numel() == count == 8
    assert torch.allclose(ours, total / count, atol=1e-5)


def test_only_positions_with_a_target_reach_the_output_head():
    batch = PaddingFreeCollator()(_examples())
    assert batch["input_ids"].shape == (1, 14)
    assert batch["logits_to_keep"].tolist() == [2, 3, 4, 6, 7, 10, 11, 12]
    assert batch["labels"].tolist() == [8, 9, 10, 12, 13, 22, 23, 24]


def test_packed_rows_keep_restarting_positions_and_mask_example_starts():
    rows = pack_examples(_examples(), max_seq_length=10)
    assert [len(r["input_ids"]) for r in rows] == [9, 5]
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 4, 5, 0, 1, 2]
    assert rows[0]["labels"][6] == IGNORE_INDEX
    model = build_tiny_llama(build_tiny_tokenizer()).eval()
    batch = PaddingFreeCollator()(rows)
    separate = PaddingFreeCollator()(_examples())
    assert batch["labels"].tolist() == separate["labels"].tolist()
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        b = model(input_ids=separate["input_ids"], position_ids=separate["position_ids"], use_cache=False).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_collator_records_example_boundaries():
    assert "cu_seq_lens_q" not in PaddingFreeCollator()(_examples())
    assert PaddingFreeCollator(boundaries=True)(_examples())["cu_seq_lens_q"].tolist() == [0, 6, 9, 14]
    rows = pack_examples(_examples(), max_seq_length=10)
    assert PaddingFreeCollator(boundaries=True)(rows)["cu_seq_lens_q"].tolist() == [0, 6, 9, 14]


def test_per_example_attention_gives_the_logits_and_gradients_of_separate_sequences():
    from finetune.packed_attention import NAME, use_packed_attention

    model = build_tiny_llama(build_tiny_tokenizer())
    assert use_packed_attention(model) and model.config._attn_implementation == NAME
    batch = PaddingFreeCollator(boundaries=True)(_examples())
    labels = batch.pop("labels")
    calls = []
    import finetune.packed_attention as packed_module

    original = packed_module.packed_sdpa_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("cu_seq_lens_q") is not None)
        return original(*args, **kwargs)

    from transformers import AttentionInterface

    AttentionInterface.register(NAME, counting)
    try:
        loss = kept_positions_loss(model(**batch), labels)
        loss.backward()
    finally:
        AttentionInterface.register(NAME, original)
    assert calls and all(calls)  # every layer took the per-example path
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_attn_implementation("sdpa")
    total, count = 0.0, 0
    for e in _examples():
        logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
        targets = torch.tensor(e["labels"][1:])
        total = total + F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
        count += int((targets != IGNORE_INDEX).sum())
    (total / count).backward()
    assert torch.allclose(loss, total / count, atol=1e-5)
    for ours, reference in zip(packed_grads, (p.grad for p in model.parameters())):
        assert torch.allclose(ours, reference, atol=1e-5)


def test_per_example_attention_without_boundaries_is_plain_sdpa():
    from finetune.packed_attention import use_packed_attention

    model = build_tiny_llama(build_tiny_tokenizer()).eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).logits
        use_packed_attention(model)
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, reference)


def test_models_on_another_kernel_than_sdpa_or_eager_are_left_alone():
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from finetune.packed_attention import use_packed_attention

    AttentionInterface.register("users_own_kernel", sdpa_attention_forward)
    model = build_tiny_llama(build_tiny_tokenizer())
    model.set_attn_implementation("users_own_kernel")
    assert not use_packed_attention(model)
    assert model.config._attn_implementation == "users_own_kernel"


def test_rows_padded_to_a_multiple_of_eight_give_the_same_loss_and_gradients():
    """finetune.collate.pad_packed_rows: the 14-token row reaches the layers as 16 tokens (a filler example after
    it), in fp32 and bf16, and nothing the loss sees changes."""
    from finetune.collate import pad_packed_rows
    from finetune.packed_attention import use_packed_attention

    for dtype, tolerance in ((torch.float32, 1e-6), (torch.bfloat16, 0)):
        model = build_tiny_llama(build_tiny_tokenizer()).to(dtype)
        assert use_packed_attention(model)
        batch = PaddingFreeCollator(boundaries=True)(_examples())
        labels = batch.pop("labels")
        assert batch["input_ids"].shape == (1, 14)
        reference = kept_positions_loss(model(**batch), labels)
        reference.backward()
        reference_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        seen = []
        layer_hook = model.model.layers[0].register_forward_hook(
            lambda m, a, out, seen=seen: seen.append(a[0].shape[1]))
        remove = pad_packed_rows(model.get_decoder(), "bf16")  # the run's precision decides, not the tensors'
        try:
            padded = kept_positions_loss(model(**batch), labels)
            padded.backward()
        finally:
            remove()
            layer_hook.remove()
        assert seen == [16]
        assert torch.allclose(padded, reference, atol=tolerance)
        for ours, theirs in zip((p.grad for p in model.parameters()), reference_grads):
            assert torch.allclose(ours, theirs, atol=tolerance)


def test_row_padding_leaves_generation_and_rows_without_boundaries_alone():
    from finetune.collate import pad_packed_rows

    model = build_tiny_llama(build_tiny_tokenizer()).eval()
    seen = []
    model.model.layers[0].register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
    pad_packed_rows(model.get_decoder(), "bf16")
    with torch.no_grad():
        first = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, do_sample=False)
        again = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, do_sample=False, use_cache=False)
        model(input_ids=torch.arange(5, 19)[None], position_ids=torch.arange(14)[None], use_cache=False)
    assert seen == [3, 1, 3, 4, 14]  # with and without a KV cache, and a row without boundaries: as given
    assert torch.equal(first, again)


def test_fp32_runs_keep_their_rows_as_they_are():
    """fp32 GEMMs showed no dip at ragged token counts: an fp32 run gets no filler."""
    from finetune.collate import pad_packed_rows

    model = build_tiny_llama(build_tiny_tokenizer())
    seen = []
    model.model.layers[0].register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
    pad_packed_rows(model.get_decoder(), "fp32")
    batch = PaddingFreeCollator(boundaries=True)(_examples())
    batch.pop("labels")
    with torch.no_grad():
        model(**batch)
    assert seen == [14]
