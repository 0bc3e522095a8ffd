"""Load a causal LM and its tokenizer from a Hugging Face folder, a GGUF file, or an embedded model's name.

GGUF files are dequantized once, a tensor at a time, and cached as a safetensors folder (about 15 s the first time
for SmolLM2-135M, 0.2 s after), so every later load is a plain `from_pretrained` of a folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from finetune.home import cache_home, staging
from finetune.model_packages import DEFAULT_MODEL, EMBEDDED_MODELS, EmbeddedModel, embedded_gguf_path
from finetune.run_folder import run_weights

logger = logging.getLogger(__name__)

# A model folder holding this file beside its config.json has no weights: load_model builds the architecture randomly
# initialized (benchmarks.shapes: real shapes measured without downloading their weights).
RANDOM_WEIGHTS_FILE = "random_weights.json"

# Bumped whenever convert_gguf writes something different, so stale caches are converted again.
CONVERTER_VERSION = 4  # 4: SentencePiece vocabularies get merges from their scores (finetune/gguf_tokenizer.py)


def available_models() -> list[str]:
    """Names the loader accepts without a path: embedded models and fine-tuned folders in the models dir."""
    names = list(EMBEDDED_MODELS)
    models_dir = cache_home() / "models"
    if models_dir.is_dir():
        names += sorted(str(p) for p in models_dir.iterdir() if (p / "config.json").is_file())
    return names


def _unknown_model_error(name: str) -> FileNotFoundError:
    listing = "\n".join(f"  - {n}" for n in available_models())
    return FileNotFoundError(
        f"Unknown model {name!r}: it is not an embedded model name, not a folder with config.json, and not a "
        f".gguf file.\nAvailable here:\n{listing}\nOr pass a Hugging Face hub id such as "
        f"'HuggingFaceTB/SmolLM2-135M-Instruct' (read from the Hugging Face cache; downloaded into it with "
        f"allow_download=True)."
    )


# What a causal LM needs from a hub repository: not its other weight formats (.bin, .pth, GGUF, ONNX copies).
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.py", "*.jinja"]
# Weights transformers never reads, which some repositories ship beside their own: Mistral's consolidated.safetensors
# for mistral-inference (14.5 GB more for Mistral-7B-Instruct-v0.3) and Meta's original/ checkpoint in Llama's.
HUB_SKIPPED = ["consolidated*.safetensors", "original/*"]


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model_path(name_or_path: str | None, allow_download: bool = False) -> str:
    """Return a local folder that `from_pretrained` can load: an embedded model's converted folder, a model folder,
    a converted .gguf file, or a hub id's snapshot in the Hugging Face cache (downloaded with `allow_download`)."""
    name = name_or_path or DEFAULT_MODEL
    if name in EMBEDDED_MODELS:
        embedded, target = EMBEDDED_MODELS[name], cache_home() / "models" / name
        if _is_current(target):  # an assembled model's file is not needed again once converted
            return str(target)
        return str(convert_gguf(embedded_gguf_path(embedded), target, embedded))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        digest = hashlib.sha256(f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode())
        return str(convert_gguf(path, cache_home() / "gguf" / f"{path.stem}-{digest.hexdigest()[:12]}"))
    if path.is_dir():
        if (path / "config.json").is_file():
            return _loadable_here(path)
        weights = run_weights(path)  # a finetune_model output folder: its merged model; an adapter needs its base
        if weights is not None and weights.merged is not None:
            return str(weights.merged)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return resolve_model_path(str(ggufs[0]))
        raise FileNotFoundError(
            f"{path} is a folder but holds no config.json (a Hugging Face model folder) and "
            f"{'several' if ggufs else 'no'} .gguf files. Point to the model folder or to one .gguf file."
        )
    if _looks_like_hub_id(name):
        return _loadable_here(Path(_hub_snapshot(name, allow_download)))
    raise _unknown_model_error(name)


def _loadable_here(folder: Path) -> str:
    """`folder`, or for an FP8 checkpoint on a machine without triton (transformers' FP8 loader imports it; the CPU
    build of torch has none) its weights dequantized to bf16 once (finetune.fp8_weights)."""
    import importlib.util

    from finetune.fp8_weights import dequantized_folder, is_fp8_checkpoint

    if is_fp8_checkpoint(folder) and importlib.util.find_spec("triton") is None:
        return str(dequantized_folder(folder))
    return str(folder)


def hub_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment at each call (HF_HUB_CACHE, else HF_HOME/hub):
    huggingface_hub reads it once at import, which would miss a cache chosen later in the process."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def _hub_snapshot(repo_id: str, allow_download: bool) -> str:
    """The local folder of hub model `repo_id`: its snapshot in the Hugging Face cache (offline), else downloaded
    into that cache with progress when `allow_download`; else one error that says how to get it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    try:
        return snapshot_download(repo_id, cache_dir=cache, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    how = (f"fetch it once where there is network (`hf download {repo_id}`, into {cache}), pass "
           f"allow_download=True (--allow_download) to download it now, or pass a local model folder")
    if not allow_download:
        raise FileNotFoundError(f"{repo_id!r} is not a folder here, and as a hub model id it is not in the Hugging "
                                f"Face cache: {how}")
    try:
        return snapshot_download(repo_id, cache_dir=cache, allow_patterns=HUB_FILES, ignore_patterns=HUB_SKIPPED)
    except Exception as err:  # no network, unknown repo, gated model: one message that says what to do
        raise FileNotFoundError(f"Could not download the hub model {repo_id!r} ({type(err).__name__}: {err}); "
                                f"{how}") from err


# Folders we write (a GGUF converted, a merged fine-tune) hold fp32 up to this many parameters: exact, and small.
# Larger ones are bf16, as Llama 3.x, Qwen 2.5 and Gemma publish theirs: half the disk and the memory (16 GB rather
# than 32 for an 8B model), the precision training and serving load on a bf16 machine anyway, one rounding of at most
# 2^-8 of a weight (below a GGUF's own quantization step; a merge adds each LoRA delta, computed in fp32, to the
# bf16 weight).
FP32_STORAGE_MAX_PARAMETERS = 2_000_000_000


def safetensors_files(folder: Path) -> list[Path]:
    """The .safetensors files transformers loads from a model folder: those its index names, else every one but
    a second copy of the weights beside them (Mistral's consolidated.safetensors, which `hf download` fetches)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    files = sorted(folder.glob("*.safetensors"))
    return [f for f in files if not f.name.startswith("consolidated")] or files


def storage_dtype(parameters: int) -> torch.dtype:
    """The dtype of a model folder we write for a model of `parameters`."""
    return torch.float32 if parameters <= FP32_STORAGE_MAX_PARAMETERS else torch.bfloat16


def convert_gguf(gguf_path: Path, target: Path, embedded: EmbeddedModel | None = None) -> Path:
    """Dequantize a GGUF file into a safetensors folder at `target`, once, a tensor at a time
    (finetune.gguf_weights); return `target`."""
    if _is_current(target):
        return target
    from filelock import FileLock  # ships with huggingface_hub, which transformers requires

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # two ranks of one DDP run may arrive here together
        if _is_current(target):
            return target
        from transformers import GenerationConfig

        from finetune.gguf_tokenizer import gguf_tokenizer
        from finetune.gguf_weights import open_gguf, write_safetensors

        logger.info("Converting %s to a safetensors folder at %s (once)", gguf_path, target)
        gguf = open_gguf(gguf_path)
        dtype = storage_dtype(gguf.parameters)
        check_disk(gguf_path, target.parent, gguf.parameters * dtype.itemsize)
        fixes = {} if embedded is None else {"eos": embedded.eos_token, "pad": embedded.pad_token,
                                              "add_bos": embedded.add_bos_token,
                                              "chat_template": embedded.chat_template}
        tokenizer = gguf_tokenizer(gguf_path, gguf.config.vocab_size, **fixes)
        stops = [tokenizer.eos_token_id] + [tokenizer.convert_tokens_to_ids(t) for t in
                                            (embedded.also_stop_at if embedded else ())]
        with staging(target) as tmp:
            write_safetensors(gguf, tmp, dtype)
            config = type(gguf.config).from_pretrained(tmp)
            config.eos_token_id = tokenizer.eos_token_id
            config.save_pretrained(tmp)
            generation = GenerationConfig.from_pretrained(tmp)
            generation.eos_token_id = stops if len(stops) > 1 else stops[0]
            generation.pad_token_id = tokenizer.pad_token_id
            generation.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "source.json").write_text(
                json.dumps({"gguf_file": str(gguf_path), "embedded": embedded.name if embedded else None,
                            "converter_version": CONVERTER_VERSION, "dtype": str(dtype).removeprefix("torch.")},
                           indent=2)
            )
    return target


def check_disk(source: Path, folder: Path, needed: int) -> None:
    """OSError before converting `source` (a GGUF file, an FP8 checkpoint) when the folder's disk cannot hold its
    dequantized weights (and 1 GiB to spare)."""
    free = shutil.disk_usage(folder).free
    if free < needed + 2**30:
        raise OSError(
            f"Converting {source} needs about {needed / 1e9:.1f} GB of disk at {folder} for its dequantized "
            f"weights, and {free / 1e9:.1f} GB is free there. Free some space, or point NEURALCHAT_HOME at a disk "
            f"with room.")


def _is_current(target: Path) -> bool:
    try:
        source = json.loads((target / "source.json").read_text())
    except (OSError, ValueError):
        return False
    weights = (target / "model.safetensors").is_file() or (target / "model.safetensors.index.json").is_file()
    return source.get("converter_version") == CONVERTER_VERSION and weights


def eos_token_ids(generation_config, tokenizer) -> list[int]:
    """The model's end-of-turn tokens: the generation config's, the tokenizer's, ChatML's <|im_end|>, and Gemma 4's
    <|tool_response>, which ends a turn with a tool call (its generation_config has it, [1, 106, 50]; a GGUF's
    metadata does not, and a served model then wrote <|tool_response> until max_tokens after every call)."""
    configured = getattr(generation_config, "eos_token_id", None)
    ids = list(configured) if isinstance(configured, list) else [configured]
    ids.append(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in ("<|im_end|>", "<|tool_response>") if t in vocab]
    return list(dict.fromkeys(i for i in ids if i is not None))


def load_tokenizer(name_or_path: str | None, allow_download: bool = False, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path, allow_download),
                                              trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str | None,
    dtype: torch.dtype = torch.bfloat16,
    allow_download: bool = False,
    **kwargs,
):
    from transformers import AutoConfig

    from finetune.language_model import auto_model_class

    path = resolve_model_path(name_or_path, allow_download)
    if "attn_implementation" not in kwargs and soft_caps_attention(path):
        # transformers' SDPA path drops Gemma 2's attention soft-cap without a word: its eager attention keeps it
        kwargs["attn_implementation"] = "eager"
    if (Path(path) / RANDOM_WEIGHTS_FILE).is_file():
        return _random_model(Path(path), dtype, **kwargs)
    config = AutoConfig.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code", False))
    return auto_model_class(config).from_pretrained(path, dtype=dtype, **kwargs)


def _random_model(path: Path, dtype: torch.dtype, **kwargs):
    """The architecture of `path`'s config.json with random weights, allocated directly in `dtype` (no fp32 copy
    first). The values come from one seeded pool of N(0, 0.02) tiled over every matrix (norms at 1): transformers'
    own initialisation draws every value and takes minutes for 8B parameters, and the values do not change speed or
    memory. Quantizing happens while loading, so with a quantization_config the weights are written once, into
    the folder, and loaded from there."""
    from transformers import AutoConfig
    from transformers.initialization import no_init_weights

    from finetune.language_model import auto_model_class, loads_language_model_alone

    config = AutoConfig.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code", False))
    if "quantization_config" in kwargs:
        return auto_model_class(config).from_pretrained(random_weights_folder(path, dtype), dtype=dtype, **kwargs)
    seed = json.loads((path / RANDOM_WEIGHTS_FILE).read_text() or "{}").get("seed", 0)
    with no_init_weights():
        model = auto_model_class(config).from_config(
            config.get_text_config() if loads_language_model_alone(config) else config, dtype=dtype, **kwargs)
    model.tie_weights()  # no_init_weights also skips the tying that init_weights does
    pool = (torch.randn(1 << 20, generator=torch.Generator().manual_seed(seed)) * 0.02).to(dtype)
    with torch.no_grad():
        for index, (name, param) in enumerate(model.named_parameters()):
            if param.ndim == 1:  # norm weights at 1, biases at 0
                param.fill_(1.0 if "norm" in name else 0.0)
                continue
            # Each matrix starts at its own place in the pool: equal matrices (every layer's q_proj, say) would be
            # stored once by an exporter that shares equal constants, as OpenVINO's serializer does (a 3B shape's
            # INT8 IR came out at 470 MB), which real weights never are.
            tile = torch.roll(pool, -((index * 104_729) % pool.numel()))
            flat = param.view(-1)
            for start in range(0, flat.numel(), tile.numel()):
                end = min(start + tile.numel(), flat.numel())
                flat[start:end] = tile[: end - start]
    return model


def random_weights_folder(path: Path, dtype: torch.dtype) -> Path:
    """The random model of `path` (a folder with the RANDOM_WEIGHTS_FILE marker) written once as an ordinary model
    folder, weights in `dtype` and the tokenizer beside them, at `path`/random-weights: for the code that reads
    weights from disk (quantizing loaders, exporters)."""
    written = Path(path) / "random-weights"
    if not (written / "config.json").is_file():
        staging = written.with_name(written.name + ".partial")
        _random_model(Path(path), dtype).save_pretrained(staging)
        load_tokenizer(str(path)).save_pretrained(staging)
        staging.rename(written)  # a killed write leaves only the .partial folder, written again next time
    return written


def soft_caps_attention(path: str | Path) -> bool:
    """Whether the model in `path` soft-caps its attention scores (Gemma 2), which only eager attention does."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(config.get("attn_logit_softcapping") or (config.get("text_config") or {}).get("attn_logit_softcapping"))
