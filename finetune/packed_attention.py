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
        if kwargs.get("softcap"):  # SDPA cannot soft-cap: the model's own eager attention does
            return _model_eager(module)(module, query, key, value, attention_mask, **kwargs)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    edges = [(start, end) for start, end in zip(bounds.tolist()[:-1], bounds.tolist()[1:]) if end > start]
    window = kwargs.get("sliding_window")
    if kwargs.get("softcap") or kwargs.get("s_aux") is not None or (
            window and max(end - start for start, end in edges) > window):
        # Gemma 2 soft-caps attention scores and Gemma 2/3 see only a window of past tokens: each example gets
        # the model's own eager attention (SDPA drops the soft-cap) with its causal, windowed mask.
        outputs = [_example_attention(module, query[:, :, start:end], key[:, :, start:end],
                                      value[:, :, start:end], window, kwargs)
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


def _model_eager(module):
    """The eager attention function of the model `module` belongs to (Gemma 2's applies its soft-cap)."""
    import sys

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return getattr(sys.modules[type(module).__module__], "eager_attention_forward", sdpa_attention_forward)


def _example_attention(module, query, key, value, window: int | None, kwargs: dict) -> torch.Tensor:
    length = query.shape[2]
    rows = torch.arange(length, device=query.device)
    distance = rows[:, None] - rows[None, :]
    allowed = (distance >= 0) & (distance < window if window else True)
    mask = torch.zeros(length, length, dtype=query.dtype, device=query.device)
    mask = mask.masked_fill(~allowed, torch.finfo(query.dtype).min)[None, None]
    if kwargs.get("softcap"):
        return _model_eager(module)(module, query, key, value, mask, **kwargs)[0]
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, allowed[None, None], **kwargs)[0]


def _tokens_first(*heads_first: torch.Tensor) -> torch.Tensor:
    return torch.cat([o.transpose(1, 2) for o in heads_first], dim=1)


def use_packed_attention(model) -> bool:
    """Switch a transformers model that uses SDPA to the per-example kernel; False if it uses another kernel."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask, sdpa_mask

    config = getattr(model, "config", None)
    # eager too: a Gemma 2 model is loaded with eager attention for its soft-cap, which the packed path keeps
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    # The mask is still built (transformers asks for one) but the packed path ignores it; outside packed batches
    # a soft-capping model runs its eager attention, which wants eager's additive mask.
    softcap = bool(getattr(config, "attn_logit_softcapping", None))
    name = f"{NAME}_eager" if softcap else NAME
    AttentionInterface.register(name, packed_sdpa_attention)
    AttentionMaskInterface.register(name, eager_mask if softcap else sdpa_mask)
    model.set_attn_implementation(name)
    return True


# Layer types (config.layer_types) whose token mixer is attention, which the kernel above splits at the example
# boundaries. Any other type carries a state along the row (Qwen 3.5's and Qwen3-Next's gated delta-net layers,
# "linear_attention", and their short causal convolution): in a packed row each example would start from the
# state the previous example left, a loss transformers never computes on its padded batches.
ATTENTION_LAYER_TYPES = {"full_attention", "sliding_attention", "chunked_attention", "attention"}
# Stateful layer types whose mixer is run once per example here: type -> the decoder layer's attribute holding it.
PER_EXAMPLE_MIXERS = {"linear_attention": "linear_attn"}
# Parts of the class names of stateful mixers in models that name no layer types (Falcon-H1, Jamba, Mamba).
_STATEFUL_CLASSES = ("Mamba", "GatedDeltaNet", "ShortConv", "RecurrentBlock", "Rwkv")


def stateful_layer_types(model) -> set[str]:
    """The layer types of `model` whose token mixer carries a state along the sequence, or for a model that names
    none, its stateful mixers' classes (empty: attention only)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    types = set(getattr(config, "layer_types", None) or ()) - ATTENTION_LAYER_TYPES
    return types or {type(m).__name__ for m in model.modules()
                     if any(part in type(m).__name__ for part in _STATEFUL_CLASSES)}


def split_stateful_mixers(model):
    """Run the stateful token mixers of `model` (see PER_EXAMPLE_MIXERS) once per example of a packed row with
    example boundaries (`cu_seq_lens_q`), each from a fresh state, as on a padded batch. Returns the undo; None
    when `model` has no stateful layers; False (and changes nothing) when it has a type this cannot split, whose
    examples must then be padded, not packed."""
    types = stateful_layer_types(model)
    if not types:
        return None
    if types - set(PER_EXAMPLE_MIXERS):
        return False
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = model.get_decoder().layers
    undo = []
    for layer, layer_type in zip(layers, config.layer_types):
        if layer_type not in PER_EXAMPLE_MIXERS:
            continue
        mixer = getattr(layer, PER_EXAMPLE_MIXERS[layer_type])
        bounds: dict = {}

        def note_bounds(module, args, kwargs, bounds=bounds):
            bounds["row"] = kwargs.get("cu_seq_lens_q")

        def forward(hidden_states, *args, _original=mixer.forward, _bounds=bounds, **kwargs):
            row = _bounds.get("row")
            if row is None or hidden_states.shape[0] != 1 or any(a is not None for a in (*args, *kwargs.values())):
                return _original(hidden_states, *args, **kwargs)  # generation, padded batches: as transformers runs
            edges = [(s, e) for s, e in zip(row.tolist()[:-1], row.tolist()[1:]) if e > s]
            return torch.cat([_original(hidden_states[:, s:e]) for s, e in edges], dim=1)

        handle = layer.register_forward_pre_hook(note_bounds, with_kwargs=True)
        mixer.forward = forward
        undo.append((handle, mixer))

    def restore() -> None:
        for handle, mixer in undo:
            handle.remove()
            del mixer.forward

    return restore


def use_packed_rows(model):
    """Prepare `model` to train on packed rows: attention once per example where its kernel allows
    (use_packed_attention), stateful mixers once per example (split_stateful_mixers). Returns (boundaries, undo):
    whether rows must carry their example boundaries (`cu_seq_lens_q`), and what undoes the split. None (and
    nothing changed) for a model whose examples must be padded instead: a stateful layer type this cannot split."""
    split = split_stateful_mixers(model)
    if split is False:
        return None
    per_example = use_packed_attention(model)
    return per_example or split is not None, split or (lambda: None)
