"""finetune.gguf_weights: a GGUF file's weights a tensor at a time, equal to what transformers' own GGUF loading
(`from_pretrained(gguf_file=...)`) gives, in fp32 and bf16, as a model or as a safetensors folder.

Each family's GGUF written by llama.cpp's converter is checked the same way in tests/test_families_end_to_end.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from finetune import gguf_weights, models

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    """The embedded SmolLM2-135M-Instruct: a real Q4_1 GGUF, tied embeddings, Llama's permuted q/k."""
    return models.embedded_gguf_path(models.EMBEDDED_MODELS[models.DEFAULT_MODEL])


@pytest.fixture(scope="module")
def reference(gguf_path):
    """transformers' own loading of the file, in fp32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32)
    return model.state_dict()


def test_the_model_equals_transformers_gguf_loading_in_fp32_and_bf16(gguf_path, reference):
    from transformers import AutoConfig

    want = reference
    gguf = gguf_weights.open_gguf(gguf_path)
    config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    assert gguf.config.to_dict() == {**config.to_dict(), "_name_or_path": ""}
    assert gguf.parameters == 134_515_008  # the tied head once
    for dtype in (torch.float32, torch.bfloat16):
        got = gguf_weights.load_model(gguf, dtype).state_dict()
        assert got.keys() == want.keys()
        unequal = [name for name in want if not torch.equal(got[name], want[name].to(dtype))]
        assert not unequal, (dtype, unequal[:3])
        assert got["model.embed_tokens.weight"].data_ptr() == got["lm_head.weight"].data_ptr()  # still tied


def test_a_folder_written_in_shards_reloads_to_the_same_weights(gguf_path, reference, tmp_path):
    import json

    from transformers import AutoModelForCausalLM

    want = reference
    gguf_weights.write_safetensors(gguf_weights.open_gguf(gguf_path), tmp_path, torch.bfloat16,
                                   shard_bytes=64 * 2**20)
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(shards) >= 3 and sorted(set(index["weight_map"].values())) == shards
    assert not list(tmp_path.glob("*.tmp"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "bfloat16"
    got = AutoModelForCausalLM.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(got[name], want[name].to(torch.bfloat16)) for name in want)


def _resident_bytes(address: int) -> int:
    """Resident bytes of the mapping that holds `address` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line[:1].isupper():  # a mapping's header: "start-end perms offset dev inode path"
            low, high = (int(part, 16) for part in line.split()[0].split("-"))
            inside = low <= address < high
        elif inside and line.startswith("Rss:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(sys.platform != "linux", reason="reads the mapping's resident pages from /proc/self/smaps")
def test_the_file_pages_of_tensors_already_read_are_released(gguf_path):
    """Otherwise the file's pages stay resident beside the model: an 8B q8_0 file's 8.5 GB on top of 16 GB."""
    gguf = gguf_weights.open_gguf(gguf_path)
    address = gguf.reader.data.ctypes.data
    tensor_bytes = sum(int(t.n_bytes) for t in gguf.reader.tensors)
    for _name, _tensor in gguf.tensors(torch.bfloat16):
        pass
    assert _resident_bytes(address) < 0.02 * tensor_bytes
    # and without the release the whole file would be resident: the check can tell
    for tensor in gguf.reader.tensors:
        tensor.data.sum()
    assert _resident_bytes(address) > 0.9 * tensor_bytes
