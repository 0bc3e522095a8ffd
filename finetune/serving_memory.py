"""How much memory serving a model on the CPU will need, from its config.json, before any weight is loaded.

Here, below both users, so that `build_chatbot` and the server (neural_chat_app.memory.plan_serving, which also
words the refusal) and `python -m finetune doctor --model M` give the same figures. How the weights are held:
- in the compute precision when they fit (bf16 where the CPU has bf16 matmuls, else fp32);
- on a CPU without bf16 matmuls whose fp32 weights do not fit (an 8B model's are 32 GB), in bf16, computed in fp32
  a layer at a time (finetune.frozen_weights, `narrow_rows`), at half the memory;
- where neither fits, nothing is loaded.

Parts: the weights; the head tied to the embeddings reordered as a copy (neural_chat_app.prepacked does when it
costs at most an eighth of the memory available); the largest linear weight once more while it is reordered, or the
fp32 widening buffer; a KV cache of KV_TOKENS tokens per request served at once (cache_values: sliding-window,
shared and delta-net layers hold less); the process; allocator slack.
Checked against the peaks of `python -m benchmarks infer --shape NAME` (ours, prompts up to 512 tokens, 2 cores of
the AMD EPYC Zen 4), measured / estimated GiB: bf16 (2026-12-06) qwen2.5-0.5b 1.73 / 1.97, llama-3.2-1b 3.38 / 3.76,
gemma-3-1b 3.02 / 3.26, qwen2.5-1.5b 3.91 / 4.29, llama-3.2-3b 7.42 / 8.20, llama-3.1-8b 16.45 / 17.88, gemma-3-4b
(multimodal, 2026-12-07) 9.93 / 10.60, phi-4-mini (2026-12-07) 8.96 / 9.89; fp32 compute with oneDNN, ATen and MKL
capped at AVX2 (2026-12-07): llama-3.2-1b fp32 weights 6.23 / 6.82, bf16 weights 3.06 / 3.43, llama-3.1-8b bf16
weights 16.10 / 17.66. +7% to +14%: the estimate reserves 4,096 tokens of cache where these runs held 544 (Gemma 3's
sliding-window layers hold their 512 or 1,024).
"""

from __future__ import annotations

from finetune.memory import GIB, MemoryEstimate, count_parameters, decoder_dims

KV_TOKENS = 4096  # context reserved per request served at once; a longer one grows past the estimate
PROCESS_GIB = 0.7  # interpreter, torch, transformers, tokenizer, the server: a model with next to no weights
SLACK = 0.05  # of the weights: allocator fragmentation
WIDEN_BUFFER_GIB = 0.25  # finetune.frozen_weights.WIDEN_BLOCK_BYTES, per request served at once
BYTES = {"bf16": 2, "fp32": 4}
PROMPT_COPY = "plain weights for prompts"  # the part of an estimate that keeps them (serving_estimate's prompt_copy)


def serving_shapes(config) -> dict:
    """What the estimate reads of a model's config (a multimodal one's language model for the sizes)."""
    hidden, _, kv, inter, layers, vocab = decoder_dims(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {"parameters": count_parameters(config), "hidden": hidden, "kv": kv, "inter": inter, "layers": layers,
            "vocab": vocab, "tied": bool(getattr(text, "tie_word_embeddings", False)
                                         or getattr(config, "tie_word_embeddings", False)),
            "cache_values": cache_values(text, KV_TOKENS)}


def cache_values(text, tokens: int) -> int:
    """Values the cache holds for one request at `tokens` of context, layer by layer as transformers' cache keeps
    them: keys and values of every token in a full-attention layer; of the window in a sliding-window one (Gemma 2-4,
    where five layers in six slide); none in a layer that reads an earlier layer's (Gemma 4's last layers); a
    fixed state in a gated delta-net layer (three in four of Qwen 3.5's), however long the context. Another layer
    type (LFM2's convolutions) is counted as full attention, the safe side."""
    layers = text.num_hidden_layers
    kinds = list(getattr(text, "layer_types", None) or ["full_attention"] * layers)[:layers]
    kinds = kinds[: layers - (getattr(text, "num_kv_shared_layers", 0) or 0)]
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    window = getattr(text, "sliding_window", None)
    total = 0
    for kind in kinds:
        if kind == "linear_attention":
            total += (text.linear_num_value_heads * text.linear_key_head_dim * text.linear_value_head_dim
                      + getattr(text, "linear_conv_kernel_dim", 4) * (
                          2 * text.linear_num_key_heads * text.linear_key_head_dim
                          + text.linear_num_value_heads * text.linear_value_head_dim))
            continue
        sliding = kind == "sliding_attention" and bool(window)
        width, count = head_dim, kv_heads
        if not sliding and getattr(text, "global_head_dim", None):  # Gemma 4's full-attention layers
            width = text.global_head_dim
            if getattr(text, "attention_k_eq_v", False):
                count = getattr(text, "num_global_key_value_heads", None) or count
        total += 2 * count * width * (min(window, tokens) if sliding else tokens)
    return total


def serving_estimate(shapes: dict, storage: str, compute: str, max_concurrency: int,
                     limit_gib: float | None, prompt_copy: bool = False) -> MemoryEstimate:
    """Peak resident memory of serving a model of `shapes` (serving_shapes) with weights in `storage`, computing in
    `compute`, `max_concurrency` requests at once; `prompt_copy`: bf16 weights reordered for decoding that also keep
    their plain copy, widened to fp32 for prompts (neural_chat_app.prepacked)."""
    size = BYTES[storage]
    parts = {"weights": shapes["parameters"] * size / GIB}
    head = shapes["vocab"] * shapes["hidden"] * size / GIB
    # the largest linear weight: the head where it is not the embeddings, else an MLP projection
    largest = max(shapes["inter"], shapes["vocab"] if not shapes["tied"] else 0) * shapes["hidden"] / GIB
    if storage == compute:  # reordered for oneDNN: the largest weight twice while it is, a tied head as a copy
        parts["reorder"] = largest * size
        if shapes["tied"] and limit_gib is not None and head <= limit_gib / 8:
            parts["tied head copy"] = head
        if prompt_copy:  # every linear weight once more, plain (a tied head's plain weight is the embeddings)
            parts[PROMPT_COPY] = (shapes["parameters"] - shapes["vocab"] * shapes["hidden"]) * size / GIB
    if storage != compute or prompt_copy:  # each thread's fp32 copy of one weight, or of a block of one
        parts["widening buffer"] = min(WIDEN_BUFFER_GIB, largest * BYTES["fp32"]) * max_concurrency
    parts["kv cache"] = shapes["cache_values"] * BYTES[compute] * max_concurrency / GIB
    parts["process"] = PROCESS_GIB
    parts["slack"] = SLACK * parts["weights"]
    return MemoryEstimate({k: round(v, 6) for k, v in parts.items()}, shapes["parameters"], 0)


def serving_storage(shapes: dict, compute: str, max_concurrency: int, narrow_allowed: bool,
                    limit_gib: float | None, prompt_copy: bool = False,
                    ) -> tuple[str | None, MemoryEstimate, MemoryEstimate | None]:
    """(the weights' dtype that fits in `limit_gib`, or None where none does; the estimate with weights in
    `compute`; the estimate with bf16 weights computed in fp32, where that was considered). `prompt_copy`: bf16
    weights keep a plain copy for prompts computed in fp32 where it fits (the estimate then has a PROMPT_COPY part)."""

    def fits(estimate: MemoryEstimate) -> bool:
        return limit_gib is None or estimate.total_gib <= limit_gib

    if prompt_copy and compute == "bf16":
        with_copy = serving_estimate(shapes, compute, compute, max_concurrency, limit_gib, prompt_copy=True)
        if fits(with_copy):
            return compute, with_copy, None
    same = serving_estimate(shapes, compute, compute, max_concurrency, limit_gib)
    if fits(same):
        return compute, same, None
    if compute == "fp32" and narrow_allowed:
        narrow = serving_estimate(shapes, "bf16", "fp32", max_concurrency, limit_gib)
        return ("bf16" if fits(narrow) else None), same, narrow
    return None, same, None


def render_parts(estimate: MemoryEstimate) -> str:
    return ", ".join(f"{name} {gib:.2f}" for name, gib in estimate.parts.items())
