"""What differs between the model families users bring, in one table: LoRA targets and the head's output transform.

Keyed by the config's `model_type`. A family missing here trains with PEFT's own defaults and its head as is.
"""

from __future__ import annotations

# LoRA targets when none are given: PEFT's per-architecture default where it has one (q_proj and v_proj for the
# Llama-like families), and ours where it has none: PEFT 0.21 stops Phi-3 with "Please specify target_modules".
DEFAULT_LORA_TARGETS = {
    "phi3": ["qkv_proj"],  # Phi-3 fuses q, k and v into one projection: the counterpart of q_proj + v_proj
    "granite": ["q_proj", "v_proj"],
}

# Separate projection names (what the users' guides list: q_proj ... down_proj) -> the fused module a family has.
FUSED_PROJECTIONS = {
    "phi3": {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
             "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"},
}

# Config fields by which a model transforms its head's output before the loss, with their no-op value: Gemma 2/3
# soft-cap the logits, Granite divides them, Cohere multiplies them.
HEAD_TRANSFORMS = {"final_logit_softcapping": None, "logits_scaling": 1.0, "logit_scale": 1.0}


def transforms_its_logits(config) -> bool:
    """Whether the model changes its head's output (soft-capping, scaling) before the loss."""
    return any(getattr(config, name, noop) not in (noop, None) for name, noop in HEAD_TRANSFORMS.items())


def lora_targets(model, requested: list[str] | None) -> list[str] | None:
    """The module names LoRA adapts in `model` for `requested` (None: the family's default, or PEFT's).

    Names of separate projections are mapped to the fused module of a family that has one (Phi-3: q_proj, k_proj,
    v_proj -> qkv_proj). A name that matches no linear layer of the model is refused with the names it has."""
    model_type = getattr(model.config, "model_type", None)
    if requested is None:
        return DEFAULT_LORA_TARGETS.get(model_type)
    fused = FUSED_PROJECTIONS.get(model_type, {})
    targets = list(dict.fromkeys(fused.get(name, name) for name in requested))
    linear = _linear_names(model)
    missing = [name for name in targets if name not in linear]
    if missing:
        raise ValueError(
            f"lora_target_modules {missing} match no linear layer of this {model_type or 'model'}; its linear "
            f"layers are {sorted(linear)} (or set lora_all_linear=True)"
        )
    return targets


def _linear_names(model) -> set[str]:
    import torch

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
