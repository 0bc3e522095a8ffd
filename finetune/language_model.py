"""The language model of a multimodal checkpoint, as a text-only model folder.

Gemma 3 from 4B up is published as one multimodal checkpoint (Gemma3ForConditionalGeneration: a SigLIP vision
tower, a projector and the Gemma 3 language model). It fine-tunes on chats and serves as it is (finetune.families:
LoRA on its language model only). The exporters do not take it: optimum-intel exports gemma3 for the
image-text-to-text task only, and llama.cpp's converter cannot map transformers 5's tensor names for it. A chat model's
export serves text, so they get its language model: `language_model_folder` writes it once into the cache as the
text-only class transformers has for it (Gemma3ForCausalLM), a tensor at a time, with the tokenizer and chat
template beside it. The vision tower is left out of such exports.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from finetune.home import derived_folder

logger = logging.getLogger(__name__)

VERSION = 1  # bumped when the folder written changes, so that stale copies are written again
# Where a multimodal checkpoint keeps its language model, tried in this order: transformers 5.5 saves Gemma 3 as
# "model.language_model.model.*", its modules are "model.language_model.*", and the published checkpoints (saved by
# transformers 4) hold "language_model.model.*" and "language_model.lm_head.*".
_PREFIXES = {"model.language_model.model.": "model.", "model.language_model.lm_head.": "lm_head.",
             "model.language_model.": "model.", "language_model.model.": "model.",
             "language_model.lm_head.": "lm_head.", "lm_head.": "lm_head."}
_WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json", "config.json", "*.bin",
                 "pytorch_model.bin.index.json")


def text_only(config) -> bool:
    """Whether `config` (a transformers config) describes a text-only model."""
    return config.get_text_config() is config if hasattr(config, "get_text_config") else True


def loads_language_model_alone(config) -> bool:
    """Whether transformers' AutoModelForCausalLM loads only the language model of the multimodal `config` (Qwen 3.5:
    Qwen3_5ForCausalLM from its checkpoint, the vision tower left out), whose class then takes the text config."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

    return not text_only(config) and CAUSAL.get(config.model_type) is not None and \
        CAUSAL.get(config.model_type) == CAUSAL.get(config.get_text_config().model_type)


def auto_model_class(config):
    """The transformers Auto class that loads the chat model `config` describes: AutoModelForCausalLM, whose mapping
    holds the text families and the multimodal ones transformers generates text with (Gemma 3 and 4 as their
    ForConditionalGeneration, Qwen 3.5 as its language model alone), else AutoModelForImageTextToText for a
    multimodal model that mapping lacks (Mistral 3: the Ministral 3 models as published)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def language_model_folder(folder: str | Path) -> Path:
    """`folder` itself for a text-only model; for a multimodal one, its language model as a text-only folder in the
    cache (written once, then reused while `folder`'s files are unchanged)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder = Path(folder).resolve()
    config = AutoConfig.from_pretrained(folder)
    if text_only(config):
        return folder
    text = copy.deepcopy(config.get_text_config())
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(text.model_type)
    if causal is None:
        raise NotImplementedError(
            f"{folder} is a multimodal {config.model_type} model whose language model ({text.model_type}) has no "
            f"text-only class in transformers, so its text part cannot be exported alone")

    def write(tmp: Path) -> dict:
        from finetune.gguf_weights import save_sharded

        logger.info("Writing the language model of %s (%s) as %s (once)", folder, config.model_type, causal)
        save_sharded(_language_model_tensors(folder), tmp)
        text.architectures = [causal]
        text.save_pretrained(tmp)
        for path in folder.iterdir():  # tokenizer, chat template, generation config
            if path.is_file() and not any(path.match(pattern) for pattern in _WEIGHT_FILES):
                shutil.copy2(path, tmp / path.name)
        return {"multimodal_source": str(folder)}

    return derived_folder("text-models", folder, VERSION, write)


def _language_model_tensors(folder: Path) -> Iterator[tuple[str, object]]:
    from safetensors import safe_open

    from finetune.models import safetensors_files

    files = safetensors_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder} has no .safetensors weights: the language model is read from those")
    found = False
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                name = language_model_key(key)
                if name is not None:
                    found = True
                    yield name, weights.get_tensor(key)
    if not found:
        raise ValueError(f"{folder}'s weights hold no language model under {sorted(_PREFIXES)}")


def language_model_key(key: str) -> str | None:
    """The text-only model's name for a multimodal checkpoint's tensor `key`; None for the vision tower's."""
    prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
    return None if prefix is None else _PREFIXES[prefix] + key[len(prefix):]
