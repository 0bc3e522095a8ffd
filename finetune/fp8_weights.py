"""FP8-published checkpoints on a CPU: their weights dequantized to bf16, once, into a plain model folder.

Some families publish their instruct models in FP8 only (Ministral 3 8B Instruct 2512: `quantization_config`
{"quant_method": "fp8"}, each linear weight in float8_e4m3fn beside its `weight_scale_inv`, one per tensor or per
128x128 block). transformers 5.5 dequantizes them on a machine without a GPU, but its FP8 module imports triton
first, which the CPU build of torch does not ship: the load stops with "No module named 'triton'". The weights are
written here once as bf16 (weight x scale, a tensor at a time), the scales and the quantization_config left out, and
every path (fine-tuning, serving, exporting, the memory estimates) reads that folder as it reads any other.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

VERSION = 1  # bumped when the folder written changes
_SCALE_SUFFIXES = ("weight_scale_inv", "activation_scale", "input_scale")


def is_fp8_checkpoint(folder: str | Path) -> bool:
    """Whether the model folder holds FP8 weights (`quantization_config.quant_method` "fp8")."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (config.get("quantization_config") or {}).get("quant_method") == "fp8"


def dequantized_folder(folder: str | Path) -> Path:
    """The FP8 checkpoint at `folder` with its weights in bf16, in the cache (written once)."""
    from finetune.home import derived_folder

    folder = Path(folder).resolve()

    def write(tmp: Path) -> dict:
        from finetune.gguf_weights import save_sharded
        from finetune.models import check_disk, safetensors_files

        files = safetensors_files(folder)
        if not files:
            raise FileNotFoundError(f"{folder} is an FP8 checkpoint without .safetensors weights: they are read "
                                    "from those")
        stored = sum(f.stat().st_size for f in files)
        check_disk(folder, tmp.parent, 2 * stored)  # FP8 to bf16: each weight byte becomes two
        logger.info("Dequantizing the FP8 weights of %s to bf16 at %s (once: no FP8 kernels on this machine)",
                    folder, tmp)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        block = config["quantization_config"].get("weight_block_size")
        save_sharded(_dequantized_tensors(files, block), tmp)
        config.pop("quantization_config")
        config["dtype"] = "bfloat16"
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for path in folder.iterdir():  # tokenizer, chat template, generation config, processor
            if path.is_file() and not path.match("*.safetensors") and path.name not in (
                    "config.json", "model.safetensors.index.json"):
                shutil.copy2(path, tmp / path.name)
        return {"fp8_source": str(folder)}

    return derived_folder("fp8-dequantized", folder, VERSION, write)


def _dequantized_tensors(files: list[Path], block: list[int] | None) -> Iterator[tuple[str, object]]:
    import torch
    from safetensors import safe_open

    scales = {}  # one per tensor or per block: small beside the weights, read once
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            scales.update({key: weights.get_tensor(key).float() for key in weights.keys()  # noqa: SIM118
                           if key.endswith("weight_scale_inv")})
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key.endswith(_SCALE_SUFFIXES):
                    continue
                tensor = weights.get_tensor(key)
                if tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                    tensor = dequantize(tensor, scales[key + "_scale_inv"], block)
                yield key, tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor


def dequantize(weight, scale, block: list[int] | None = None):
    """`weight` (FP8) x `scale`: one scale for the tensor, or one per `block` of rows x columns (the config's
    `weight_block_size`, DeepSeek-style 128x128; the last blocks of a side that is no multiple are cut short)."""
    weight = weight.float()
    if scale.numel() == 1:
        return weight * scale.reshape(())
    rows, cols = weight.shape
    if block is None:  # no block size given: the scales tile the weight evenly
        if rows % scale.shape[0] or cols % scale.shape[1]:
            raise ValueError(f"FP8 scales of shape {tuple(scale.shape)} do not tile a {rows}x{cols} weight evenly "
                             "and the config gives no weight_block_size")
        block = [rows // scale.shape[0], cols // scale.shape[1]]
    expanded = scale.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return weight * expanded
