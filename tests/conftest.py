"""Shared fixtures.

The fast part (the default):   pytest
Everything (what CI runs):     pytest -m ""      (scripts/test.sh adds -n <cores> and NEURALCHAT_REQUIRE_BACKENDS=1)
One marker:                    pytest -m integration
Tests build tiny models from a config in the test itself (2 layers, hidden 64) with a small byte-level BPE
tokenizer trained on the spot; a few integration tests use the embedded SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import os
import random

import pytest

from finetune.chat_template import CHATML_TEMPLATE

pytest_plugins = ["tests.require_backends"]

# Two heavy threads per process on 2 cores is the worst case (measured); tests keep to one unless they say so.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")



def cores_per_worker() -> int:
    """This test process's share of the cores: pytest-xdist runs PYTEST_XDIST_WORKER_COUNT of them side by side,
    and two OpenMP teams on the same cores run several times slower than one (FACTS: decoding fell from 16 to
    under 1 tok/s), so a test that wants more than one thread takes only its share."""
    from finetune.hardware import usable_cores

    return max(1, usable_cores() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Intel Xeon processors with AMX run bfloat16 matrix multiplications quickly.",
    "What is the capital of France? The capital of France is Paris.",
    "Summarize the article. The article says the weather will be sunny tomorrow.",
    "def add(a, b):\n    return a + b\n",
    "I love hiking but I am not a fan of crowded trails.",
    '{"attributes": [], "aspects": [], "sentiment": "NEUTRAL"}',
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\n### Input:\n### Response:\n",
] * 4


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def build_tiny_llama(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny llama (2 layers, hidden 64) plus tokenizer: a Hugging Face folder like any other."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tiny_tokenizer()
    build_tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_real_vocab_dir(tmp_path_factory):
    """The tiny llama with the embedded SmolLM2's tokenizer (49152 words): a vocabulary llama.cpp's GGUF converter
    recognizes, as it does every published model's (it has no GGUF pre-tokenizer for the tests' own BPE)."""
    from finetune.models import load_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama-real-vocab")
    tokenizer = load_tokenizer(None)
    build_tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    import torch

    random.seed(0)
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
