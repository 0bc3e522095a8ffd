"""Real model architectures at their real sizes, without their weights: speed and memory do not depend on the
weights' values, so a randomly initialized model of the published shape measures what the real one would.

    python -m benchmarks train --shape llama-3.2-1b           # ours vs plain Trainer + PEFT at that shape
    python -m benchmarks infer --shape llama-3.2-1b           # ours vs plain transformers generate at that shape

SHAPES holds each model's published config.json values (hidden size, layers, heads, KV heads, intermediate size,
vocabulary, tied embeddings, rope settings), copied from the Hugging Face repositories named beside them.
`write_shape_folder` makes a model folder of one: its config.json, a tokenizer (the embedded SmolLM2's: its ids all
lie inside every shape's vocabulary) and the finetune.models.RANDOM_WEIGHTS_FILE marker, so finetune_model and
the plain recipe alike build the model randomly initialized, directly in the training dtype.
"""

from __future__ import annotations

import json
from pathlib import Path

_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

SHAPES: dict[str, dict] = {
    # Qwen/Qwen2.5-0.5B (q, k, v projections carry a bias in every Qwen2)
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
                     "rms_norm_eps": 1e-6, "hidden_act": "silu"},
    # meta-llama/Llama-3.2-1B
    "llama-3.2-1b": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
                     "tie_word_embeddings": True, "rope_theta": 500000.0,
                     "rope_scaling": {**_LLAMA3_ROPE, "factor": 32.0}, "max_position_embeddings": 131072,
                     "rms_norm_eps": 1e-5, "hidden_act": "silu"},
    # Qwen/Qwen2.5-1.5B
    "qwen2.5-1.5b": {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True, "rope_theta": 1000000.0, "max_position_embeddings": 131072,
                     "rms_norm_eps": 1e-6, "hidden_act": "silu"},
    # meta-llama/Llama-3.2-3B
    "llama-3.2-3b": {"model_type": "llama", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                     "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
                     "tie_word_embeddings": True, "rope_theta": 500000.0,
                     "rope_scaling": {**_LLAMA3_ROPE, "factor": 32.0}, "max_position_embeddings": 131072,
                     "rms_norm_eps": 1e-5, "hidden_act": "silu"},
    # meta-llama/Llama-3.1-8B
    "llama-3.1-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
                     "tie_word_embeddings": False, "rope_theta": 500000.0,
                     "rope_scaling": {**_LLAMA3_ROPE, "factor": 8.0}, "max_position_embeddings": 131072,
                     "rms_norm_eps": 1e-5, "hidden_act": "silu"},
    # The other families users bring, at the sizes they bring them. Qwen/Qwen3-0.6B (q/k norms, no bias)
    "qwen3-0.6b": {"model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                   "tie_word_embeddings": True, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
                   "rms_norm_eps": 1e-6, "hidden_act": "silu"},
    # google/gemma-3-1b-it (five sliding-window layers of 512 to one global; 262k vocabulary, tied)
    "gemma-3-1b": {"model_type": "gemma3_text", "hidden_size": 1152, "intermediate_size": 6912,
                   "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                   "vocab_size": 262144, "tie_word_embeddings": True, "rope_theta": 1000000.0,
                   "rope_local_base_freq": 10000.0, "sliding_window": 512, "sliding_window_pattern": 6,
                   "query_pre_attn_scalar": 256, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                   "hidden_activation": "gelu_pytorch_tanh"},
    # google/gemma-2-2b (attention and head logits soft-capped: attention runs the model's eager path)
    "gemma-2-2b": {"model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                   "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 256000,
                   "tie_word_embeddings": True, "rope_theta": 10000.0, "sliding_window": 4096,
                   "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                   "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh"},
    # microsoft/Phi-3-mini-4k-instruct (fused qkv_proj and gate_up_proj; 32k vocabulary)
    "phi-3-mini": {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
                   "tie_word_embeddings": False, "rope_theta": 10000.0, "sliding_window": 2047,
                   "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                   "hidden_act": "silu"},
    # microsoft/Phi-4-mini-instruct (phi3 again: fused projections, but 3/4 of each head rotated, 8 KV heads, a tied
    # 200k vocabulary). Its longrope factor lists have the published length (48, half the rotated dims) and
    # placeholder values: the values change neither speed nor memory.
    "phi-4-mini": {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
                   "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 200064,
                   "tie_word_embeddings": True, "partial_rotary_factor": 0.75, "rope_theta": 10000.0,
                   "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 48, "long_factor": [1.0] * 48},
                   "sliding_window": 262144, "max_position_embeddings": 131072,
                   "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu"},
    # Qwen/Qwen3-4B
    "qwen3-4b": {"model_type": "qwen3", "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                 "tie_word_embeddings": True, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
                 "rms_norm_eps": 1e-6, "hidden_act": "silu"},
    # mistralai/Mistral-7B-v0.3 (32k vocabulary, no sliding window)
    "mistral-7b": {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 32768,
                   "tie_word_embeddings": False, "rope_theta": 1000000.0, "sliding_window": None,
                   "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "hidden_act": "silu"},
    # google/gemma-3-4b-it: one multimodal checkpoint (a SigLIP vision tower of 0.4B beside the language model);
    # fine-tuned on chats it trains its language model's LoRA only
    "gemma-3-4b": {"model_type": "gemma3", "mm_tokens_per_image": 256, "boi_token_index": 255999,
                   "eoi_token_index": 256000, "image_token_index": 262144,
                   "text_config": {"model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240,
                                   "num_hidden_layers": 34, "num_attention_heads": 8, "num_key_value_heads": 4,
                                   "head_dim": 256, "vocab_size": 262208, "sliding_window": 1024,
                                   "query_pre_attn_scalar": 256,
                                   "rope_scaling": {"factor": 8.0, "rope_type": "linear"}},
                   "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 896,
                                     "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 27,
                                     "patch_size": 14, "vision_use_head": False}},
}
# Issue 21's size ladder, one family per step (what the GPU script runs); the other shapes add the families.
SIZE_LADDER = ("qwen2.5-0.5b", "llama-3.2-1b", "qwen2.5-1.5b", "llama-3.2-3b", "llama-3.1-8b")


def shape_config(name: str):
    """The transformers config of shape `name`."""
    from transformers import AutoConfig

    if name not in SHAPES:
        raise SystemExit(f"unknown shape {name!r}; choose from {', '.join(SHAPES)}")
    values = dict(SHAPES[name])
    return AutoConfig.for_model(values.pop("model_type"), **values)


def write_shape_folder(name: str, folder: Path, tokenizer_from: str = "smollm2-135m-instruct") -> Path:
    """A model folder of shape `name` that finetune.models.load_model builds randomly initialized."""
    from finetune.models import RANDOM_WEIGHTS_FILE, load_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    config = shape_config(name)
    config.save_pretrained(folder)
    load_tokenizer(tokenizer_from).save_pretrained(folder)
    _fit_vocabulary(folder / "tokenizer.json", config.get_text_config().vocab_size)
    (folder / RANDOM_WEIGHTS_FILE).write_text(json.dumps({"shape": name, "seed": 0}))
    return folder


def shape_folder(name: str) -> Path:
    """Shape `name`'s model folder under the cache home, written on first use: what the benchmarks load."""
    from finetune.home import cache_home

    shape_config(name)  # an unknown name stops here, before anything is written
    return write_shape_folder(name, cache_home() / "shapes" / name)


def _fit_vocabulary(tokenizer_json: Path, size: int) -> None:
    """Cut a byte-level BPE tokenizer to its first `size` ids, so that every id it gives lies inside a smaller
    model's vocabulary (Mistral's 32,768, Phi-3's 32,064 against SmolLM2's 49,152). BPE ids follow the merge order,
    so dropping the later tokens and every merge that makes or uses one leaves a working tokenizer (the 256 bytes
    and the special tokens have the lowest ids); texts take a few more tokens, as they do with a 32k vocabulary."""
    spec = json.loads(tokenizer_json.read_text())
    model = spec["model"]
    if len(model["vocab"]) <= size:
        return
    if model.get("type") != "BPE" or any(t["id"] >= size for t in spec.get("added_tokens", [])):
        raise SystemExit(f"{tokenizer_json}: cannot cut this tokenizer to {size} ids (not BPE, or a special token "
                         f"lies above); give write_shape_folder another tokenizer_from")
    model["vocab"] = {token: i for token, i in model["vocab"].items() if i < size}
    pairs = (m.split(" ") if isinstance(m, str) else m for m in model["merges"])
    model["merges"] = [[a, b] for a, b in pairs
                       if a in model["vocab"] and b in model["vocab"] and a + b in model["vocab"]]
    tokenizer_json.write_text(json.dumps(spec, ensure_ascii=False))


def shape_parameters(name_or_config) -> int:
    """Parameters of a shape (tied embeddings counted once), from a model built on the meta device."""
    from finetune.memory import count_parameters

    config = shape_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    return count_parameters(config)


# --- what `python -m benchmarks train --shape` needs ------------------------------------------------------------

SHAPE_DEFAULTS = {"steps": 2, "warmup": 1, "batch": 2, "seq_len": 256, "examples": 64, "eval_examples": 0}


def prepare_shape(args) -> None:
    """Point args at the shape's model folder (written once under the cache home), choose the variants (plain in
    the machine's training precision, ours; on a GPU also QLoRA) and, with --gradient-checkpointing auto, turn
    checkpointing on for ours when the memory estimate needs it."""
    from benchmarks.machine import train_precision

    args.model = str(shape_folder(args.shape))
    if args.variants == "plain-fp32,plain-bf16,ours":  # benchmarks.train's DEFAULT_VARIANTS
        plain = "plain-bf16" if train_precision(args.device) == "bf16" else "plain-fp32"
        args.variants = f"{plain},ours" + (",ours-qlora" if args.device == "cuda" else "")
    if args.gradient_checkpointing == "auto":
        needs = args.device == "cpu" and _over(side_estimate("ours", args, checkpointing=False))
        args.gradient_checkpointing = "on" if needs else "off"


def side_estimate(variant: str, args, checkpointing: bool | None = None):
    """finetune.memory's estimate of one side's peak: ours as finetune_model runs it; plain as Trainer + PEFT
    runs it (fp32 weights loaded, bf16 autocast where the machine trains in bf16, no lean ops, every position's
    logits, batches padded to their longest example: at most batch x seq_len tokens)."""
    from benchmarks.machine import train_precision
    from finetune.memory import MemorySettings, estimate_memory, model_config

    precision = {"plain-fp32": "fp32", "ours-fp32": "fp32", "plain-bf16": "bf16", "ours-bf16": "bf16"}.get(
        variant, train_precision(args.device))
    common = {"precision": precision, "batch": args.batch, "seq_len": args.seq_len, "lora_rank": args.lora_rank}
    if variant.startswith("plain"):
        settings = MemorySettings(**common, lean_ops=False, chunked_head=False, frozen_bytes=4.0)
    else:
        on = args.gradient_checkpointing == "on" if checkpointing is None else checkpointing
        settings = MemorySettings(**common, gradient_checkpointing=on, qlora=variant == "ours-qlora")
    return estimate_memory(model_config(args.model), settings)


def _over(estimate) -> bool:
    from finetune.memory import available_gib

    available, _ = available_gib()
    return available is not None and estimate.total_gib > available


def shape_side_skip(variant: str, args) -> str | None:
    """Why a side is not started (its estimate exceeds the memory available), or None."""
    from finetune.memory import available_gib

    if args.device != "cpu":
        return None
    estimate = side_estimate(variant, args)
    available, source = available_gib()
    if available is not None and estimate.total_gib > available:
        return f"estimated peak {estimate.total_gib:.1f} GiB > {available:.1f} GiB available ({source})"
    return None


def shape_estimates(args) -> dict:
    """Each side's estimated peak, beside what the run measures (the calibration of finetune.memory)."""
    from finetune.memory import available_gib

    sides = [v for v in args.variants.split(",")]
    estimates = {v: side_estimate(v, args) for v in sides}
    return {"available_gib": available_gib()[0],
            **{v: {"total_gib": round(e.total_gib, 2), "parts": e.parts} for v, e in estimates.items()}}


def render_shape(payload: dict, head: str, rows: list[dict]) -> str:
    from benchmarks.machine import markdown_table

    estimates = payload.get("memory_estimate", {})
    for r in rows:
        estimate = estimates.get(r["variant"], {}).get("total_gib")
        r["estimate_mb"] = round(estimate * 1024) if estimate else None
        r["note"] = r.get("skipped") or ("gradient checkpointing" if r.get("gradient_checkpointing") else "")
    load = payload["machine"].get("load_average_1min")
    after = payload.get("load_average_after")
    head += (f"\nshared machine: load average {load:.2f} at the start"
             + (f", {after[0]:.2f} at the end" if after else "") + "; random weights, no held-out loss")
    columns = [("variant", "variant"), ("useful_tokens_per_s", "useful tok/s"), ("seconds_per_step", "s/step"),
               ("speedup_vs_plain", "x plain"), ("fraction", "of limit"),
               ("fraction_of_model_shape_limit", "of shape limit"), ("peak_rss_mb", "peak RSS MB"),
               ("estimate_mb", "estimated MB"), ("note", "note")]
    return head + "\n" + markdown_table(rows, columns)
