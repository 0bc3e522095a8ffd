"""How much memory a fine-tune will need, estimated from the model's config before any weight is loaded.

finetune_model checks the estimate against the memory this machine has available and stops with the figures
and what to change rather than be killed by the kernel halfway through loading; `python -m finetune doctor
--model M` prints the same estimate. Every part is bytes per parameter or per token, from what the recipe keeps:

- frozen weights: bf16 (2 bytes) for LoRA in every precision (on a CPU without bf16 instructions they are stored
  in bf16 and computed in fp32, layer by layer: finetune.frozen_weights.compute_frozen_in); fp32 master weights, their
  gradients and AdamW's two moments (16 bytes) for a full fine-tune; NF4 (about 0.53 bytes) for QLoRA's layers;
- adapters: fp32 weights, gradients and AdamW's two moments, 16 bytes per LoRA parameter;
- activations: what autograd keeps per token of the batch and layer: with finetune.lean_ops, the layer input,
  q, k, v, the attention output, the MLP input, gate and up (2 x hidden + 2 x query width + 2 x KV width + 2 x
  intermediate values, in the compute precision; q and k once more where the model normalises them); with gradient
  checkpointing only the layer input, plus one layer recomputed;
- the output head: one chunk of 256 fp32 logits rows with the chunked head loss (and an fp32 copy of the head
  when its weights are stored in bf16 but computed in fp32); every position's logits in bf16 and fp32 copies
  without it;
- the process itself (Python, torch, transformers, tokenizer, oneDNN's kernels) and allocator slack.

Calibrated (PROCESS_GIB, ACTIVATION_FACTOR, SLACK) against measured peaks on an AMD EPYC with AVX512-BF16, bf16,
tcmalloc, LoRA r=16 on every linear: a 4-layer hidden-512 model at 256 and 4096 tokens per step (measured 0.82 / 1.37
GiB, estimated 0.90 / 1.45). Checked on the real shapes at batch 2 x 256 (1 thread, 2026-12-04; the steps held 410 of
the 512 tokens the estimate assumes): qwen2.5-0.5b 2144 / 2825 MB, llama-3.2-1b 3673 / 4558, qwen2.5-1.5b 4573 /
5950, llama-3.2-3b 7962 / 9762, llama-3.1-8b (checkpointing) 16884 / 18231: +8% to +32%, on the safe side. A term
for "twice the head's weight" calibrated before then was the fp32 copy of the bf16 head that the loss made every
step (finetune.lean_ops.head_loss now computes in the run's precision); it is gone with the copy. The plain recipe's
estimate (benchmarks.shapes) errs high by 15-30% on one thread.
Again on 2 threads with five more families (2026-12-06, same EPYC, `benchmarks/results/train-*-20261206-0*.json`):
ours +4% (gemma-2-2b) to +35% (qwen3-0.6b), plain +2% to +8%. Qwen3-0.6B's plain peak had exceeded the estimate
(6973 MB against 6707) while q and the attention output were counted hidden-wide: its 16 heads x 128 are twice its
hidden size, and its q/k norms keep normalised copies; both are counted now (7096).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

GIB = 2**30
HEAD_CHUNK = 256  # finetune.lean_ops.HEAD_CHUNK, repeated to keep this module free of torch at import
# Calibrated on measured peaks (see CALIBRATION): the interpreter, torch, transformers, PEFT, datasets and the
# tokenizer on tcmalloc, what a run of a model with next to no weights peaks at.
PROCESS_GIB = 0.65
# Autograd keeps about 2.2x the values counted below per token (measured: a 4-layer hidden-512 model at 256 and 4096
# tokens per step, 0.14 MB per token against 0.065 counted); the rest is not itemised here (the attention kernel's
# own buffers, gradients meeting in the backward).
ACTIVATION_FACTOR = 2.2
SLACK = 0.05  # allocator fragmentation, as a fraction of what the run allocates (calibrated with the above)
MEMORY_ENV = "NEURALCHAT_MEMORY_GIB"  # how much memory a run may use, in GiB, in place of what the machine has


@dataclass(frozen=True)
class MemorySettings:
    """The run settings that decide its memory. batch: examples per device step; seq_len: tokens per example (the
    padding-free batch holds at most batch x seq_len tokens); lora_targets: "all-linear" or module names (None: the
    family's default)."""

    precision: str = "bf16"  # compute precision: "bf16", "fp16" or "fp32"
    batch: int = 1
    seq_len: int = 512
    lora_rank: int = 8
    lora_targets: str | list[str] | None = "all-linear"
    lora_dropout: float = 0.0
    full_finetune: bool = False
    qlora: bool = False
    gradient_checkpointing: bool = False
    chunked_head: bool = True  # padding-free batches with finetune.lean_ops' head loss
    lean_ops: bool = True
    frozen_bytes: float = 2.0  # per frozen weight: bf16 in our recipe; 4 for a plain fp32 load (what Trainer does)

    def __post_init__(self):
        if self.precision not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"MemorySettings.precision must be bf16, fp16 or fp32, got {self.precision!r}")
        for name in ("batch", "seq_len", "lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"MemorySettings.{name} must be at least 1, got {getattr(self, name)}")
        if self.qlora and self.full_finetune:
            raise ValueError("MemorySettings: qlora and full_finetune exclude each other")


@dataclass
class MemoryEstimate:
    """Peak resident memory of a run, in GiB, by part."""

    parts: dict[str, float] = field(default_factory=dict)
    parameters: int = 0
    trainable: int = 0
    settings: MemorySettings | None = None

    @property
    def total_gib(self) -> float:
        return sum(self.parts.values())

    def render(self) -> str:
        parts = ", ".join(f"{name} {gib:.2f}" for name, gib in self.parts.items())
        return (f"{self.total_gib:.1f} GiB ({parts}; {self.parameters / 1e9:.2f} B parameters, "
                f"{self.trainable / 1e6:.1f} M trainable)")


class InsufficientMemoryError(MemoryError):
    """The run's estimated peak exceeds the memory available to it (raised before the model is loaded)."""


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started or since reset_peak_rss(). VmHWM starts afresh at
    exec, unlike getrusage's ru_maxrss, which a child started by subprocess inherits from its parent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Start this process's peak resident memory afresh from what it holds now (Linux: clear_refs 5), so that
    each phase of a run gets its own peak; False where the kernel does not allow it (the peak then carries over)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def model_config(model_path: str | Path, trust_remote_code: bool = False):
    """The transformers config of a model folder (its config.json): nothing else is read."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)


def _meta_model(config):
    """The model built on the meta device: exact parameter shapes for any architecture, no memory."""
    import torch

    from finetune.language_model import auto_model_class, loads_language_model_alone

    # A config read from a folder's own code (auto_map, with trust_remote_code: model_config) is of a class
    # transformers loaded as a dynamic module: the model's classes come from the same code. A config whose auto_map
    # names code for a family transformers has (Phi-3.5-mini and Phi-4-mini publish one) was read into the native
    # class without that code, and its model is the native one too.
    remote = type(config).__module__.startswith("transformers_modules")
    # Qwen 3.5 loads as its language model alone (the vision tower left out), whose class takes the text config
    built = config.get_text_config() if loads_language_model_alone(config) else config
    with torch.device("meta"):
        return auto_model_class(config).from_config(built, trust_remote_code=remote)


def count_parameters(config) -> int:
    """Parameters of the model `config` describes (tied weights once)."""
    return sum(p.numel() for p in _meta_model(config).parameters())


def _target_names(model, targets) -> set[str] | None:
    """The linear-layer names LoRA adapts (None: every linear but the output head, PEFT's "all-linear")."""
    if targets == "all-linear":
        return None
    from finetune.families import lora_targets

    return set(lora_targets(model, targets))  # the names training adapts: the family's default, fused names mapped


def decoder_dims(config) -> tuple[int, int, int, int, int, int]:
    """(hidden, query width, KV width, intermediate, layers, vocabulary) of a decoder config (a multimodal one's
    text part). The query width is heads x head_dim: twice the hidden size in Qwen3-0.6B, less in Gemma."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, heads = text.hidden_size, text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv = (getattr(text, "num_key_value_heads", None) or heads) * head_dim
    inter = getattr(text, "intermediate_size", None) or 4 * hidden
    return hidden, heads * head_dim, kv, inter, text.num_hidden_layers, text.vocab_size


def estimate_memory(config, settings: MemorySettings) -> MemoryEstimate:
    """Peak resident memory of a fine-tune of the model `config` describes (a transformers config, or a model
    folder) with `settings`, on a CPU (on a GPU: the device's memory plus the same process on the host)."""
    import torch

    from finetune.families import text_decoder_prefix

    if isinstance(config, (str, Path)):
        config = model_config(config)
    s = settings
    model = _meta_model(config)
    head = model.get_output_embeddings()
    head_params = head.weight.numel() if head is not None else 0
    params = sum(p.numel() for p in model.parameters())
    targets = _target_names(model, s.lora_targets)
    # A multimodal model's LoRA adapts its language model only (finetune.families.text_lora_targets)
    text = text_decoder_prefix(model)
    lora = linear_params = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        linear_params += module.weight.numel()
        adapted = text is None or name.startswith(f"{text}.")
        if adapted and (targets is None or name.rsplit(".", 1)[-1] in targets):
            lora += s.lora_rank * (module.in_features + module.out_features)
    compute = 4 if s.precision == "fp32" else 2
    hidden, q, kv, inter, layers, vocab = decoder_dims(config)
    qk_norms = any(name.endswith(".q_norm") for name, _ in model.named_modules())  # Qwen 3, Gemma 3, OLMo 2
    tokens = s.batch * s.seq_len
    parts: dict[str, float] = {}

    if s.full_finetune:
        trainable = params
        parts["weights"] = params * 4 / GIB  # fp32 master weights
        parts["gradients + AdamW"] = params * 12 / GIB
        if compute == 2:
            parts["weights"] += params * 2 / GIB  # autocast keeps a bf16 copy of each trained weight per step
    else:
        trainable = lora
        frozen = params
        if s.frozen_bytes > compute:  # autocast's bf16 copy of each fp32 weight, kept for the backward
            parts["autocast copies"] = (linear_params + head_params) * compute / GIB
        if s.qlora:  # NF4 layers (0.5 byte + blockwise scales), embeddings and head in the compute precision
            parts["weights"] = (linear_params * 0.53 + (params - linear_params) * compute) / GIB
        else:
            parts["weights"] = frozen * s.frozen_bytes / GIB  # bf16 (fp16 on a GPU in fp16)
        parts["adapters + AdamW"] = lora * 16 / GIB

    # Values autograd keeps per token and layer (see the module docstring), in the compute precision.
    kept = 2 * hidden + 2 * q + 2 * kv + 2 * inter  # q and the attention output are heads x head_dim wide
    if qk_norms:  # the normalised q and k besides
        kept += q + kv
    if not s.lean_ops:  # the norm outputs, the MLP product and the attention output's layout copy besides
        kept += 2 * hidden + q + inter
    if not s.full_finetune and s.lora_dropout > 0:  # each adapter's dropped-out input and its mask
        kept += (5 * hidden + q + inter) * (compute + 1) / compute  # inputs of q, k, v, gate, up; o; down
    per_layer = tokens * kept * compute
    working = tokens * (2 * inter + 4 * hidden) * 4  # one layer's gradients in flight (fp32 where they meet)
    if s.gradient_checkpointing:
        parts["activations"] = ACTIVATION_FACTOR * (layers * tokens * hidden * compute + per_layer + working) / GIB
    else:
        parts["activations"] = ACTIVATION_FACTOR * (layers * per_layer + working) / GIB

    if s.chunked_head:
        head_bytes = min(tokens, HEAD_CHUNK) * vocab * (4 + 2) + tokens * hidden * 4
        if compute > s.frozen_bytes and not s.full_finetune:  # bf16-stored head computed in fp32: one fp32 copy
            head_bytes += head_params * 4
    else:  # every position's logits: bf16, fp32 copy, log-probabilities, their gradient
        head_bytes = tokens * vocab * (compute + 4 + 4 + 4)
    parts["head"] = head_bytes / GIB
    parts["process"] = PROCESS_GIB
    parts["slack"] = SLACK * sum(v for k, v in parts.items() if k != "process")
    return MemoryEstimate({k: round(v, 3) for k, v in parts.items()}, params, trainable, s)


def available_gib() -> tuple[float | None, str]:
    """(GiB this run may use, where the figure comes from): NEURALCHAT_MEMORY_GIB when set, else the machine's
    available memory (MemAvailable), within a cgroup's limit."""
    from finetune.hardware import memory_gib

    if os.environ.get(MEMORY_ENV):
        try:
            return float(os.environ[MEMORY_ENV]), f"{MEMORY_ENV}={os.environ[MEMORY_ENV]}"
        except ValueError as err:
            raise ValueError(f"{MEMORY_ENV}={os.environ[MEMORY_ENV]!r} is not a number of GiB") from err
    mem = memory_gib()
    figures = [v for v in (mem["available"], mem["cgroup_limit"]) if v is not None]
    if not figures:
        return None, "unknown"
    return min(figures), "available memory (MemAvailable" + (", cgroup limit)" if mem["cgroup_limit"] else ")")


def _alternatives(config, s: MemorySettings, limit: float) -> list[str]:
    """Changes that would fit, each alone, as the settings a user sets."""
    from dataclasses import replace

    options = []
    if not s.gradient_checkpointing:
        options.append(("gradient_checkpointing=True", replace(s, gradient_checkpointing=True)))
    if s.batch > 1:
        options.append(("per_device_train_batch_size=1 (raise gradient_accumulation_steps to keep the batch)",
                        replace(s, batch=1)))
    if s.seq_len > 256:
        options.append((f"max_seq_length={s.seq_len // 2}", replace(s, seq_len=s.seq_len // 2)))
    if not s.qlora and not s.full_finetune:
        options.append(("qlora=True (4-bit base weights; slow on a CPU)", replace(s, qlora=True)))
    if s.full_finetune:
        options.append(("LoRA in place of full_finetune", replace(s, full_finetune=False)))
    cheapest = replace(s, gradient_checkpointing=True, batch=1, qlora=not s.full_finetune, full_finetune=False)
    lines = []
    for what, changed in options:
        total = estimate_memory(config, changed).total_gib
        lines.append(f"  {what}: {total:.1f} GiB" + (" (fits)" if total <= limit else ""))
    total = estimate_memory(config, cheapest).total_gib
    lines.append(f"  all of these together: {total:.1f} GiB" + (" (fits)" if total <= limit else
                                                                 " (does not fit: a smaller model is needed)"))
    return lines


def check_memory(config, settings: MemorySettings, limit_gib: float | None = None,
                 where: str = "") -> MemoryEstimate:
    """The estimate; raises InsufficientMemoryError naming the estimate, the memory available and what would fit
    when the estimate exceeds `limit_gib` (None: available_gib())."""
    if isinstance(config, (str, Path)):
        config = model_config(config)
    estimate = estimate_memory(config, settings)
    source = "passed in"
    if limit_gib is None:
        limit_gib, source = available_gib()
    problem = fit_problem(config, estimate, limit_gib, source, where)
    if problem:
        raise InsufficientMemoryError(problem.replace("{stops}", "stopped before loading the model"))
    return estimate


def fit_problem(config, estimate: MemoryEstimate, limit_gib: float | None, source: str, where: str = "") -> str | None:
    """None when `estimate` fits in `limit_gib`; else what it needs, what there is and what would fit ("{stops}"
    stands for what the caller does about it)."""
    if limit_gib is None or estimate.total_gib <= limit_gib:
        return None
    return (f"This fine-tune{' of ' + where if where else ''} would need about {estimate.render()} at its peak, "
            f"and {limit_gib:.1f} GiB is available ({source}); {{stops}}. Change one of:\n"
            + "\n".join(_alternatives(config, estimate.settings, limit_gib))
            + f"\n(set {MEMORY_ENV} to run anyway with a figure of your own)")


def settings_from_config(config, precision: str) -> MemorySettings:
    """MemorySettings of a TextGenerationFinetuningConfig run in `precision`."""
    fa, args, data = config.finetune_args, config.training_args, config.data_args
    targets = "all-linear" if fa.lora_all_linear else fa.lora_target_modules
    # DPO trains on each pair's chosen and rejected reply in one forward, KTO on each completion beside a
    # mismatched one for its KL term: two sequences with activations per example. The reference pass runs
    # without gradients (the adapter switched off), so it keeps no activations.
    sequences = 2 if fa.task in ("dpo", "kto") else 1
    return MemorySettings(
        precision=precision, batch=args.per_device_train_batch_size * sequences, seq_len=data.max_seq_length,
        lora_rank=fa.lora_rank, lora_targets=targets, lora_dropout=fa.lora_dropout, full_finetune=fa.full_finetune,
        qlora=fa.qlora, gradient_checkpointing=bool(args.gradient_checkpointing),
        chunked_head=not data.pad_to_max_length)
