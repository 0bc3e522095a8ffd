"""What differs between the model families users bring, in one table: LoRA targets and the head's output transform.

Keyed by the config's `model_type`. A family missing here trains with PEFT's own defaults and its head as is.
"""

from __future__ import annotations

# LoRA targets when none are given: PEFT's per-architecture default where it has one (q_proj and v_proj for the
# Llama-like families), and ours where it has none: PEFT 0.21 stops Phi-3 with "Please specify target_modules".
DEFAULT_LORA_TARGETS = {
    "phi3": ["qkv_proj"],  # Phi-3 fuses q, k and v into one projection: the counterpart of q_proj + v_proj
    "granite": ["q_proj", "v_proj"],
    # Qwen 3.5: three layers in four mix tokens with a gated delta-net, not attention; its fused q, k, v projection
    # is their counterpart of q_proj + v_proj, which only every fourth layer has
    "qwen3_5_text": ["q_proj", "v_proj", "in_proj_qkv"],
}

# Separate projection names (what the users' guides list: q_proj ... down_proj) -> the modules a family has for
# them: Phi-3's fused ones, and beside Qwen 3.5's attention projections those of its gated delta-net layers.
_DELTA_NET = {"q_proj": ["q_proj", "in_proj_qkv"], "k_proj": ["k_proj", "in_proj_qkv"],
              "v_proj": ["v_proj", "in_proj_qkv"], "o_proj": ["o_proj", "out_proj"]}
FUSED_PROJECTIONS = {
    "phi3": {"q_proj": ["qkv_proj"], "k_proj": ["qkv_proj"], "v_proj": ["qkv_proj"],
             "gate_proj": ["gate_up_proj"], "up_proj": ["gate_up_proj"]},
    "qwen3_5_text": _DELTA_NET,
}

# Config fields by which a model transforms its head's output before the loss, with their no-op value: Gemma 2/3
# soft-cap the logits, Granite divides them, Cohere multiplies them.
HEAD_TRANSFORMS = {"final_logit_softcapping": None, "logits_scaling": 1.0, "logit_scale": 1.0}


def transforms_its_logits(config) -> bool:
    """Whether the model changes its head's output (soft-capping, scaling) before the loss."""
    return any(getattr(config, name, noop) not in (noop, None) for name, noop in HEAD_TRANSFORMS.items())


def default_lora_targets(model_type: str | None) -> list[str]:
    """The linear-layer names LoRA adapts in a `model_type` model when none are given: ours, PEFT's, or q and v."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    peft = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)  # a few are a regex over a whole model
    return list(DEFAULT_LORA_TARGETS.get(model_type) or (peft if isinstance(peft, list) else None)
                or ["q_proj", "v_proj"])


def lora_targets(model, requested: list[str] | None) -> list[str]:
    """The module names LoRA adapts in `model` for `requested` (None: the family's default, default_lora_targets).

    Names of separate projections are mapped to the modules a family has for them (Phi-3: q_proj, k_proj, v_proj ->
    qkv_proj; Qwen 3.5: q_proj -> q_proj and in_proj_qkv). A name that matches no linear layer of the model is
    refused with the names it has."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    model_type = getattr(config, "model_type", None)
    fused = FUSED_PROJECTIONS.get(model_type, {})
    names = default_lora_targets(model_type) if requested is None else requested
    targets = list(dict.fromkeys(target for name in names for target in fused.get(name, [name])))
    linear = _linear_names(model)
    missing = [name for name in targets if name not in linear]
    if missing:
        given = "the default LoRA targets" if requested is None else "lora_target_modules"
        raise ValueError(
            f"{given} {missing} match no linear layer of this {model_type or 'model'}; its linear layers are "
            f"{sorted(linear)}: set lora_target_modules to some of them (or lora_all_linear=True)"
        )
    return targets


def text_decoder_prefix(model) -> str | None:
    """The module path of a multimodal model's language model ("model.language_model" in Gemma 3 4B and up, whose
    checkpoints load as Gemma3ForConditionalGeneration); None for a text-only model. LoRA on chats adapts that
    part only: the vision tower's linear layers share names with it (q_proj, v_proj) but see no image here."""
    config = model.config
    if getattr(config, "text_config", None) is None or not hasattr(model, "get_decoder"):
        return None
    decoder = model.get_decoder()
    return next((name for name, module in model.named_modules() if module is decoder and name), None)


def chats_are_text(model) -> None:
    """A multimodal model whose training forward requires token_type_ids (Gemma 3 marks image tokens 1 and raises
    without them) gets zeros in calls without them: every token of a chat is text."""
    import inspect

    import torch

    if text_decoder_prefix(model) is None or "token_type_ids" not in inspect.signature(model.forward).parameters:
        return

    def add_token_types(module, args, kwargs):
        if module.training and kwargs.get("token_type_ids") is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            shape = ids.shape if ids is not None else kwargs["inputs_embeds"].shape[:2]
            kwargs["token_type_ids"] = torch.zeros(shape, dtype=torch.long, device=model.device)
        return args, kwargs

    model.register_forward_pre_hook(add_token_types, with_kwargs=True)


def text_lora_targets(model, names: list[str] | None) -> str | list[str] | None:
    """LoRA's target_modules for `names` (None: the family's default, as lora_targets gives it) that reach only the
    language model of a multimodal model, as one regular expression; `names` as they are for a text-only one.
    `names` "all-linear" stands for every linear layer of the language model."""
    import re

    prefix = text_decoder_prefix(model)
    if prefix is None:
        return names
    decoder = model.get_submodule(prefix)
    if names == "all-linear":
        names = sorted(_linear_names(decoder))
    elif names is None:
        names = default_lora_targets(model.config.get_text_config().model_type)
    return rf"{re.escape(prefix)}\..*\.({'|'.join(map(re.escape, names))})"


def _linear_names(model) -> set[str]:
    import torch

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
