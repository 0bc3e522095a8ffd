"""LoRA adapters served on one copy of their base model.

A fine-tune from `python -m finetune` is a LoRA adapter of a base model (the run folder's adapter/; merged/ is the
same weights as a full copy). The server loads the base once and attaches each adapter to it with PEFT
(TorchBackend.add_adapter); an AdapterView stands for one adapter as a Backend of its own, so a request's `model`
field picks its adapter without reloading anything, and a request naming the base runs with adapters disabled.

Which adapters fit the served model: those whose adapter_config.json names it as base_model_name_or_path
(`fits_base`), with every weight of the shape the base's layer has (`check_shapes`, before PEFT touches the model).

The OpenVINO backend refuses adapters: OPENVINO_REFUSAL says why.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from pathlib import Path

from finetune.run_folder import ADAPTER_CONFIG_FILE, ADAPTER_DIR
from neural_chat_app.config import GenerationConfig
from neural_chat_app.streaming import StreamResult

# Checked with openvino-genai 2026.4.1 on an export of the tests' tiny llama and two adapters: a
# ContinuousBatchingPipeline built with both ran every add_request() with the adapter that the last generate() had
# set (none before the first), whatever the request's own GenerationConfig.adapters named; on our q/k/v-fused export
# genai reported the adapters' q_proj/v_proj tensors unused and generate() with an adapter failed (ParameterMismatch).
OPENVINO_REFUSAL = (
    "LoRA adapters are served on the torch backend only. The OpenVINO backend runs openvino-genai's "
    "continuous-batching pipeline, which applies one set of LoRA weights to every request of a step: "
    "add_request()/step() ignore a request's GenerationConfig.adapters (only generate() switches them, for all of "
    "its requests at once), so requests for different adapters cannot share its batch; and our exports fuse q/k/v "
    "into one MatMul, which the adapters' q_proj/v_proj weights no longer match. Serve the base with "
    "backend: torch, or each fine-tune's merged model on its own."
)


def adapter_folder(path: str | Path) -> Path | None:
    """The PEFT adapter folder `path` names: itself (it holds adapter_config.json) or a fine-tune run folder's
    adapter/; None for anything else."""
    path = Path(path).expanduser()
    for folder in (path, path / ADAPTER_DIR):
        if (folder / ADAPTER_CONFIG_FILE).is_file():
            return folder
    return None


def adapter_base(folder: Path) -> str | None:
    """The base model an adapter was trained on, as its adapter_config.json names it."""
    try:
        return json.loads((folder / ADAPTER_CONFIG_FILE).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def model_location(name: str | None) -> str:
    """Where model `name` lives, to compare two names of one model: the resolved folder of an embedded model, a
    folder, or a hub id in the Hugging Face cache; else the name itself. Never converts or downloads."""
    from finetune.models import DEFAULT_MODEL, EMBEDDED_MODELS, cache_home, resolve_model_path

    name = name or DEFAULT_MODEL
    if name in EMBEDDED_MODELS:
        return str((cache_home() / "models" / name).resolve())
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    try:
        return str(Path(resolve_model_path(name, allow_download=False)).resolve())  # a hub id already cached
    except (OSError, ValueError, RuntimeError):
        return name


def fits_base(folder: Path, base_location: str) -> str | None:
    """None when the adapter in `folder` was trained on the model at `base_location`, else why not."""
    base = adapter_base(folder)
    if base is None:
        return f"{folder / ADAPTER_CONFIG_FILE} names no base_model_name_or_path"
    if model_location(base) != base_location:
        return f"it was trained on {base!r} (adapter_config.json), not on the served model at {base_location}"
    return None


def check_shapes(model, folder: Path) -> None:
    """Refuse an adapter whose weights do not fit `model` (the plain base, or its PeftModel), before PEFT changes
    the model: a LoRA pair must match its layer's in/out features, and a full weight it carries (embeddings resized
    for new tokens, say) the base's own shape, which a shared base cannot take."""
    file = folder / "adapter_model.safetensors"
    if not file.is_file():
        return  # a .bin adapter: PEFT's own load says what is wrong with it
    from safetensors import safe_open

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = dict(base.named_modules())
    params = dict(base.named_parameters())
    problems = []
    with safe_open(str(file), "pt") as weights:
        for key in weights.keys():
            shape = tuple(weights.get_slice(key).get_shape())
            name = key.removeprefix("base_model.model.")
            layer, _, part = name.rpartition(".lora_")
            if layer:
                module = modules.get(layer)
                if module is None:
                    problems.append(f"{key} is for a layer the base lacks ({layer})")
                    continue
                want = {"A.weight": (None, getattr(module, "in_features", None)),
                        "B.weight": (getattr(module, "out_features", None), None)}.get(part)
                if want is not None and len(shape) == 2 and any(w not in (None, s) for w, s in zip(want, shape)):
                    problems.append(f"{key} has shape {list(shape)}, the base's {layer} is "
                                    f"{module.in_features} -> {module.out_features}")
            elif name in params and tuple(params[name].shape) != shape:
                problems.append(f"{key} has shape {list(shape)}, the base's is {list(params[name].shape)} "
                                f"(a vocabulary resized for new tokens: serve this fine-tune's merged model)")
    if problems:
        raise ValueError("; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))


def _chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    try:
        return json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError):
        return None


def adapter_tokenizer(tokenizer, folder: Path):
    """The base's tokenizer, or a shallow copy with the chat template the fine-tune saved beside its adapter when
    that differs (finetune gives a base without one a template): the merged model would use that template."""
    template = _chat_template(folder)
    if not template or template == getattr(tokenizer, "chat_template", None):
        return tokenizer
    own = copy.copy(tokenizer)  # shares the vocabulary; only the template differs
    own.chat_template = template
    return own


class AdapterView:
    """One LoRA adapter of a shared TorchBackend, as a Backend of its own: it generates with the adapter `name`
    selected for each call (TorchBackend.stream's `adapter`) and closes nothing (the base owns the weights)."""

    def __init__(self, base, name: str, folder: Path, tokenizer=None):
        self.base = base  # the TorchBackend holding the weights; the model manager leases it, not the view
        self.model_id = name
        self.folder = folder
        self.tokenizer = tokenizer if tokenizer is not None else base.tokenizer

    kind = property(lambda self: self.base.kind)
    features = property(lambda self: self.base.features)
    max_concurrency = property(lambda self: self.base.max_concurrency)
    weight_bytes = property(lambda self: self.base.weight_bytes)
    dtype = property(lambda self: self.base.dtype)

    def stream(self, prompt_ids: list[int], config: GenerationConfig, result: StreamResult,
               cancel: threading.Event) -> Iterator[str]:
        return self.base.stream(prompt_ids, config, result, cancel, adapter=self.model_id)

    def prompt_logprobs(self, prompt_ids: list[int], top: int) -> list:
        return self.base.prompt_logprobs(prompt_ids, top, adapter=self.model_id)

    def close(self) -> None:
        pass
