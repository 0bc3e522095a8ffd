"""GGUF weights as Hugging Face tensors, one tensor at a time, in the dtype asked for.

transformers' own GGUF loading (`from_pretrained(gguf_file=...)`) dequantizes every tensor to fp32 into one state
dict and only then builds the model beside it: 4 bytes per parameter for the dict, and the model on top. An 8B GGUF
needs over 40 GiB that way, whatever it was quantized to. Here each tensor is dequantized, renamed and cast on its
own, through transformers' own name map and tensor processors (Llama's q/k un-permutation, Gemma's norm offsets),
so the values are those of `from_pretrained(gguf_file=...)`:
- `write_safetensors` turns a GGUF file into a safetensors folder holding one shard in memory at a time;
- `load_model` builds the model from tensors already in its dtype: bf16 holds 2 bytes per parameter at the peak.
"""

from __future__ import annotations

import copy
import json
import mmap
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEQUANTIZE_BYTES = 64 * 1024**2  # of the file per dequantize call
SHARD_BYTES = 2 * 1024**3  # safetensors shards of at most 2 GiB: what one shard costs in memory while it is written


def _dequantize(tensor) -> np.ndarray:
    """A GGUF tensor's values in fp32, dequantized DEQUANTIZE_BYTES of the file at a time into one array: gguf's
    `dequantize` makes full-size fp32 temporaries (Q8_0: the int8 values widened, then their product with the
    scales), 2.1 GB each for an 8B model's 128,256 x 4,096 tables. Converting the 8B shape's Q8_0 file peaked at
    8.2 GiB with whole-tensor calls (and the previous table's values still held), 5.3 GiB in blocks."""
    from gguf import dequantize

    data = tensor.data
    if data.ndim < 2 or data.nbytes <= DEQUANTIZE_BYTES:
        return dequantize(data, tensor.tensor_type)
    rows = data.shape[0]  # the blocks of a row lie in that row: rows dequantize independently
    step = max(1, DEQUANTIZE_BYTES * rows // data.nbytes)
    first = dequantize(data[:step], tensor.tensor_type)
    values = np.empty((rows, *first.shape[1:]), dtype=first.dtype)
    values[:step] = first
    for start in range(step, rows, step):
        values[start:start + step] = dequantize(data[start:start + step], tensor.tensor_type)
    return values


@dataclass
class GGUFWeights:
    """A GGUF file opened once (its metadata parsed: about 17 s for Gemma 3's 262k-token vocabulary on a 2-core
    EPYC) with its transformers config; `tensors` dequantizes the weights one at a time."""

    path: Path
    reader: object  # gguf.GGUFReader
    parsed: dict  # transformers' reading of the metadata (load_gguf_checkpoint without tensors)
    config: object  # the transformers config, as from_pretrained(gguf_file=...) builds it

    @property
    def parameters(self) -> int:
        """Parameters stored in the file (a tied head once), from the tensor shapes alone."""
        return sum(int(t.n_elements) for t in self.reader.tensors)

    def model_class(self):
        """The transformers class of the model (AutoModelForCausalLM builds it from a folder or hub id only)."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            return type(AutoModelForCausalLM.from_config(self.config))

    def _release(self, tensor) -> None:
        """Unmap the file pages of a tensor already dequantized. The kernel would drop them under pressure anyway,
        but until then they count as resident: an 8B q8_0 file's 8.5 GB beside a 16 GB bf16 model measured as a
        peak that does not fit 24 GB."""
        mapped = getattr(self.reader.data, "_mmap", None)
        if mapped is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        # Everything up to the tensor's end: the kernel maps up to 64 KiB of neighbouring pages at each fault
        # (fault-around), some of them the tensors before this one.
        mapped.madvise(mmap.MADV_DONTNEED, 0, tensor.data_offset + tensor.n_bytes)

    def tensors(self, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
        """(Hugging Face name, tensor in `dtype`) for every weight, dequantized one at a time."""
        from transformers import AutoModelForCausalLM
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS,
            TensorProcessor,
            get_gguf_hf_weights_map,
            read_field,
        )

        architecture = read_field(self.reader, "general.architecture")[0]
        # The processors read the GGUF's own config fields (head counts for the q/k un-permutation) as transformers
        # parsed them; processors of mixture-of-experts families gather experts into parsed["tensors"].
        parsed = {**self.parsed, "tensors": {}}
        processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed["config"])
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(self.config)
        names = get_gguf_hf_weights_map(skeleton, processor)
        del skeleton
        for tensor in self.reader.tensors:
            weights = _dequantize(tensor)
            result = processor.process(weights=weights, name=tensor.name, tensor_key_mapping=names,
                                       parsed_parameters=parsed)
            gathered = [(name, parsed["tensors"].pop(name).to(dtype).contiguous()) for name in list(parsed["tensors"])]
            hf_name, value = names.get(result.name), None
            if hf_name is not None:
                array = result.weights
                # F32/F16 tensors come back as read-only views of the mapped file: copy those, adopt the rest.
                value = torch.from_numpy(array if array.flags.writeable else array.copy()).to(dtype).contiguous()
                del array  # before the next tensor's: the 8B head's fp32 values alone are 2.1 GB
            del weights, result
            self._release(tensor)  # after the last read of its pages (the copy above)
            yield from gathered
            if value is not None:
                yield hf_name, value


def open_gguf(path: str | Path) -> GGUFWeights:
    """Parse a GGUF file's metadata (twice: once by gguf's reader for the tensors, once by transformers for the
    config, which takes a path and not a reader)."""
    from gguf import GGUFReader
    from transformers import CONFIG_MAPPING
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    parsed = load_gguf_checkpoint(str(path), return_tensors=False)
    # What AutoConfig.from_pretrained(folder, gguf_file=name) does with the same dictionary.
    config = CONFIG_MAPPING[parsed["config"]["model_type"]].from_dict(dict(parsed["config"]))
    return GGUFWeights(path, GGUFReader(str(path)), parsed, config)


def write_safetensors(gguf: GGUFWeights, target: str | Path, dtype: torch.dtype,
                      shard_bytes: int | None = None) -> None:
    """Write the GGUF file's weights as a safetensors model folder (config.json, generation_config.json and the
    shards, with an index when there are several) in `dtype`, holding at most one shard in memory."""
    from transformers import GenerationConfig

    target = Path(target)
    config = copy.deepcopy(gguf.config)
    config.dtype = dtype
    config.architectures = [gguf.model_class().__name__]
    save_sharded(gguf.tensors(dtype), target, shard_bytes)
    config.save_pretrained(target)
    GenerationConfig.from_model_config(config).save_pretrained(target)


def save_sharded(tensors: Iterable[tuple[str, torch.Tensor]], target: str | Path,
                 shard_bytes: int | None = None) -> None:
    """Save (name, tensor) pairs as safetensors shards of at most `shard_bytes` in `target` (model.safetensors, or
    numbered shards with an index), holding one shard in memory."""
    from safetensors.torch import save_file

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    shard_bytes = shard_bytes or SHARD_BYTES
    shards: list[list[str]] = []  # the tensor names of each shard written, in order
    current: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush():
        nonlocal current, size
        if current:
            save_file(current, str(target / f"shard-{len(shards):05d}.tmp"), metadata={"format": "pt"})
            shards.append(list(current))
        current, size = {}, 0

    for name, value in tensors:
        nbytes = value.numel() * value.element_size()
        if current and size + nbytes > shard_bytes:
            flush()
        current[name] = value
        size += nbytes
        total += nbytes
    flush()
    if len(shards) == 1:
        os.replace(target / "shard-00000.tmp", target / "model.safetensors")
    else:
        weight_map = {}
        for i, names in enumerate(shards):
            final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            os.replace(target / f"shard-{i:05d}.tmp", target / final)
            weight_map.update(dict.fromkeys(names, final))
        (target / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def load_model(gguf: GGUFWeights | str | Path, dtype: torch.dtype):
    """The model of a GGUF file in `dtype`, built from tensors cast one at a time (peak: the model in `dtype` and one
    fp32 tensor, against over 4 bytes per parameter more through `from_pretrained(gguf_file=...)`)."""
    if not isinstance(gguf, GGUFWeights):
        gguf = open_gguf(gguf)
    state_dict = dict(gguf.tensors(dtype))
    model = gguf.model_class().from_pretrained(None, config=copy.deepcopy(gguf.config), state_dict=state_dict,
                                               dtype=dtype)
    return model.eval()
