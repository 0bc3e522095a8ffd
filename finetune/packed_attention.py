"""Attention for padding-free batches on the CPU: one causal SDPA call per example, no mask.

transformers reads packed examples from restarting position ids and builds one block-diagonal mask over the
whole row; on the CPU, SDPA with a mask runs its flash kernel over every query-key pair of the row and cannot
skip the blocks the mask zeroes, so attention costs (tokens in the batch)^2 instead of the sum of each example's
length^2. Measured here (SmolLM2-135M LoRA, batch 4 chats of 40-500 tokens, 2 cores): the masked kernel took 41%
of the step, mostly in its backward. Splitting the row at the example boundaries the collator records
(`cu_seq_lens_q`, the same key the flash-attention varlen path uses) lets each call use the maskless causal kernel.

Without `cu_seq_lens_q` (generation, padded batches) the function is transformers' own SDPA, unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from finetune.lean_ops import rebuildable

NAME = "sdpa_packed"
_VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def packed_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    for name in _VARLEN_KEYS:
        kwargs.pop(name, None)
    if bounds is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    edges = [(start, end) for start, end in zip(bounds.tolist()[:-1], bounds.tolist()[1:]) if end > start]
    if kwargs.get("sliding_window") or kwargs.get("softcap") or kwargs.get("s_aux") is not None:
        outputs = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end],
                                          value[:, :, start:end], None, is_causal=True, **kwargs)[0]
                   for start, end in edges]
        return torch.cat(outputs, dim=1), None
    # transformers' SDPA call for a maskless causal example, with the output left in SDPA's (heads, tokens)
    # layout: the backward keeps these outputs anyway, so the (tokens, heads) copy the output projection reads
    # is rebuilt from them in the backward instead of being kept too (finetune.lean_ops).
    gqa = {"enable_gqa": True} if hasattr(module, "num_key_value_groups") else {}
    heads_first = [
        F.scaled_dot_product_attention(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                       dropout_p=kwargs.get("dropout", 0.0), scale=kwargs.get("scaling"),
                                       is_causal=end - start > 1, **gqa)
        for start, end in edges
    ]
    out = _tokens_first(*heads_first)
    rebuildable(out, _tokens_first, *heads_first)
    return out, None


def _tokens_first(*heads_first: torch.Tensor) -> torch.Tensor:
    return torch.cat([o.transpose(1, 2) for o in heads_first], dim=1)


def use_packed_attention(model) -> bool:
    """Switch a transformers model that uses SDPA to the per-example kernel; False if it uses another kernel."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, packed_sdpa_attention)
    # The mask is still built (transformers asks for one) but the packed path ignores it.
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return True
