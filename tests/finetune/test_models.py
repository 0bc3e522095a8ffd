"""Model loading: the embedded GGUF model converted once to safetensors, folders, errors.

pytest tests/finetune/test_models.py   (the first run converts the embedded model: about 20 s)
"""

import json
from pathlib import Path

import pytest
import torch

from finetune import models


def test_unknown_model_lists_what_is_available():
    with pytest.raises(FileNotFoundError) as e:
        models.resolve_model_path("no-such-model")
    assert "Unknown model 'no-such-model'" in str(e.value)
    assert "smollm2-135m-instruct" in str(e.value)


def _hub_snapshot(hf_home, repo_id: str, model_dir) -> str:
    """Lay out `model_dir`'s files as the Hugging Face cache holds a downloaded snapshot of `repo_id`."""
    import shutil

    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    return str(repo / "snapshots" / commit)


def test_hub_ids_are_not_downloaded_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(FileNotFoundError, match=r"not in the Hugging Face cache: fetch it once.*hf download "
                                                r"HuggingFaceTB/SmolLM2-135M-Instruct.*allow_download=True"):
        models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    # allowed, but no network here (HF_HUB_OFFLINE): one error that says what to do, not a traceback from the hub
    with pytest.raises(FileNotFoundError, match=r"Could not download the hub model.*pass a local model folder"):
        models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct", allow_download=True)


def test_a_hub_id_downloads_into_the_cache_when_allowed(tmp_path, monkeypatch, tiny_model_dir):
    import huggingface_hub

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    calls = []
    real = huggingface_hub.snapshot_download

    def download(repo_id, **kw):  # the network, simulated: the files arrive in the cache, as the hub client puts them
        if kw.get("local_files_only"):
            return real(repo_id, **kw)
        calls.append((repo_id, kw["cache_dir"], kw["allow_patterns"], kw["ignore_patterns"]))
        return _hub_snapshot(tmp_path / "hf", repo_id, tiny_model_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    path = models.resolve_model_path("org/tiny-chat", allow_download=True)
    assert calls == [("org/tiny-chat", str(tmp_path / "hf" / "hub"), models.HUB_FILES, models.HUB_SKIPPED)]
    assert (Path(path) / "config.json").is_file()
    assert models.resolve_model_path("org/tiny-chat") == path  # cached now: no second download, no flag needed
    assert len(calls) == 1


@pytest.mark.integration
def test_a_download_takes_what_transformers_reads_and_not_the_second_copies_of_the_weights():
    """The files of published repositories, filtered by the hub client's own matcher with our patterns."""
    from huggingface_hub.utils import filter_repo_objects

    mistral = ["config.json", "generation_config.json", "model-00001-of-00003.safetensors",
               "model.safetensors.index.json", "consolidated.safetensors", "params.json", "tokenizer.json",
               "tokenizer.model", "tokenizer.model.v3", "tokenizer_config.json", "README.md"]
    llama = ["config.json", "model.safetensors", "tokenizer.json", "original/consolidated.00.pth",
             "original/params.json", "original/tokenizer.model", "LICENSE.txt"]
    phi = ["config.json", "model-00001-of-00002.safetensors", "configuration_phi3.py", "modeling_phi3.py",
           "tokenizer.json", "vocab.json", "merges.txt"]

    def kept(files):
        return set(filter_repo_objects(files, allow_patterns=models.HUB_FILES, ignore_patterns=models.HUB_SKIPPED))

    assert kept(mistral) == {"config.json", "generation_config.json", "model-00001-of-00003.safetensors",
                             "model.safetensors.index.json", "params.json", "tokenizer.json", "tokenizer.model",
                             "tokenizer_config.json"}
    assert kept(llama) == {"config.json", "model.safetensors", "tokenizer.json", "LICENSE.txt"}
    assert kept(phi) == set(phi)


def test_a_folder_with_a_second_copy_of_its_weights_counts_the_copy_transformers_loads(tmp_path):
    """`hf download mistralai/Mistral-7B-Instruct-v0.3` without patterns also fetches consolidated.safetensors:
    parameter counts and weight sizes read the shards transformers loads, with or without an index."""
    from safetensors.torch import save_file

    from quantize.artifacts import weight_bytes

    weight = {"w": torch.zeros(4, 8)}
    save_file(weight, tmp_path / "model.safetensors")
    save_file({"layers.0.w": torch.zeros(4, 8)}, tmp_path / "consolidated.safetensors")
    assert models.safetensors_files(tmp_path) == [tmp_path / "model.safetensors"]
    assert weight_bytes(tmp_path) == (tmp_path / "model.safetensors").stat().st_size
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "consolidated.safetensors"):
        save_file(weight, sharded / name)
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    assert [f.name for f in models.safetensors_files(sharded)] == ["model-00001-of-00002.safetensors",
                                                                   "model-00002-of-00002.safetensors"]
    assert models.safetensors_files(tmp_path / "nothing") == []


def test_a_cached_hub_id_works_offline_everywhere_a_model_is_named(tmp_path, monkeypatch, tiny_model_dir):
    """finetune_model and build_chatbot take a hub id whose snapshot is in the Hugging Face cache, offline."""
    from finetune import finetune_model
    from neural_chat_app import GenerationConfig, PipelineConfig, build_chatbot
    from tests.finetune.conftest import tiny_config, write_jsonl

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    snapshot = _hub_snapshot(tmp_path / "hf", "org/tiny-chat", tiny_model_dir)
    assert models.resolve_model_path("org/tiny-chat") == snapshot
    assert models.load_tokenizer("org/tiny-chat").eos_token
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(8)]
    result = finetune_model(tiny_config("org/tiny-chat", write_jsonl(tmp_path / "c.jsonl", rows), tmp_path / "out",
                                        task="chat", max_steps=1))
    assert (result.merged_dir / "config.json").is_file()
    bot = build_chatbot(PipelineConfig(model_name_or_path="org/tiny-chat"))
    try:
        assert isinstance(bot.predict("hi", GenerationConfig(max_new_tokens=3, do_sample=False)), str)
    finally:
        bot.close()
    from quantize import QuantizeConfig, quantize_model

    artifact = quantize_model(QuantizeConfig(model="org/tiny-chat", output_dir=str(tmp_path / "q"), backend="openvino",
                                             bits=8, num_eval_prompts=1, eval_new_tokens=2))
    assert (artifact / "openvino_model.xml").is_file()
    from finetune.evaluate.generation import resolve_model

    assert resolve_model("org/tiny-chat").path == snapshot


def test_allow_download_reaches_the_hub_from_every_entry_point(monkeypatch, tiny_model_dir):
    """build_chatbot, the server, quantize and evaluate each pass their allow_download switch to the one resolver."""
    from finetune.evaluate.generation import resolve_model
    from neural_chat_app import LoadingModelConfig, PipelineConfig
    from neural_chat_app.loading import resolve_source
    from neural_chat_app.server import load_settings
    from neural_chat_app.server.app import pipeline_config
    from quantize import QuantizeConfig
    from quantize.artifacts import resolve_source as quantize_source

    asked = []
    monkeypatch.setattr(models, "_hub_snapshot", lambda repo, allow: asked.append((repo, allow)) or str(tiny_model_dir))
    resolve_source(PipelineConfig("org/a", loading_config=LoadingModelConfig(allow_download=True)))
    resolve_source(pipeline_config(load_settings(None, model="org/b", allow_download=True, trust_remote_code=True)))
    quantize_source(QuantizeConfig(model="org/c", allow_download=True).model, True)
    resolve_model("org/d", allow_download=True)
    resolve_model("org/e")
    assert asked == [("org/a", True), ("org/b", True), ("org/c", True), ("org/d", True), ("org/e", False)]
    assert pipeline_config(load_settings(None, trust_remote_code=True)).loading_config.trust_remote_code


def test_folder_without_a_model_says_what_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.resolve_model_path(str(tmp_path))


def test_a_model_folder_resolves_to_itself(tiny_model_dir):
    assert models.resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)


@pytest.mark.integration
def test_embedded_model_converts_once_and_matches_the_gguf(tmp_path, monkeypatch):
    """The converted folder gives the GGUF's logits, a tokenizer without the GGUF's stray BOS, and reloads fast."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path))
    path = models.resolve_model_path(None)
    assert json.loads((tmp_path / "models" / "smollm2-135m-instruct" / "source.json").read_text())["embedded"]
    assert models.resolve_model_path("smollm2-135m-instruct") == path  # cached: no second conversion

    gguf = models.embedded_gguf_path(models.EMBEDDED_MODELS[models.DEFAULT_MODEL])
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
    gguf = models.embedded_gguf_path(models.EMBEDDED_MODELS[models.DEFAULT_MODEL])
    path = models.resolve_model_path(str(gguf))
    assert (tmp_path / "gguf").is_dir() and path.startswith(str(tmp_path / "gguf"))
    tokenizer = models.load_tokenizer(path)
    model = models.load_model(path)
    # The model knows the answer: it scores Paris above the other capitals. (Its greedy reply is a matter of a
    # near tie in bf16: with oneDNN and ATen capped at AVX2 it began "L'Étoile" instead.)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, tokenize=False)
    scores = {city: _log_likelihood(model, tokenizer, prompt, f"The capital of France is {city}.")
              for city in ("Paris", "Berlin", "London", "Madrid")}
    assert max(scores, key=scores.get) == "Paris", scores


def _log_likelihood(model, tokenizer, prompt: str, reply: str) -> float:
    ids = tokenizer(prompt + reply, add_special_tokens=False, return_tensors="pt")["input_ids"]
    start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(ids).logits[0, start - 1:-1].float()
    return float(torch.log_softmax(logits, -1).gather(1, ids[0, start:, None]).sum())


@pytest.mark.integration
def test_a_large_gguf_converts_to_bf16_shards_a_tensor_at_a_time(tmp_path, monkeypatch):
    """Above FP32_STORAGE_MAX_PARAMETERS (here: any model) the folder is bf16, in shards: an 8B GGUF becomes
    16 GB on disk, never a whole fp32 copy in memory."""
    from safetensors.torch import load_file

    from finetune import gguf_weights

    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path))
    monkeypatch.setattr(models, "FP32_STORAGE_MAX_PARAMETERS", 1000)
    monkeypatch.setattr(gguf_weights, "SHARD_BYTES", 100 * 2**20)
    gguf = models.embedded_gguf_path(models.EMBEDDED_MODELS[models.DEFAULT_MODEL])
    path = Path(models.resolve_model_path(str(gguf)))
    assert json.loads((path / "source.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    shards = sorted(path.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (path / "model.safetensors.index.json").is_file()
    weights = {name: t for shard in shards for name, t in load_file(shard).items()}
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    exact = gguf_weights.load_model(gguf, torch.float32).state_dict()
    assert all(torch.equal(weights[name], exact[name].to(torch.bfloat16)) for name in weights)
    assert models.resolve_model_path(str(gguf)) == str(path)  # converted once


def test_a_gguf_that_the_disk_cannot_hold_is_refused_before_converting(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path))
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=200 * 10**6))
    gguf = models.embedded_gguf_path(models.EMBEDDED_MODELS[models.DEFAULT_MODEL])
    with pytest.raises(OSError, match=r"needs about 0\.5 GB of disk .* 0\.2 GB is free there.*NEURALCHAT_HOME"):
        models.resolve_model_path(str(gguf))
    assert not [p for p in (tmp_path / "gguf").iterdir() if not p.name.endswith(".lock")]


CUSTOM_CODE = '''from transformers import LlamaConfig, LlamaForCausalLM


class TinyCustomConfig(LlamaConfig):
    model_type = "tiny_custom"


class TinyCustomForCausalLM(LlamaForCausalLM):
    config_class = TinyCustomConfig
'''


@pytest.mark.integration
def test_trust_remote_code_reaches_training_the_merge_and_serving(tmp_path, tiny_model_dir):
    """A model whose code ships in its folder (auto_map): refused without trust_remote_code, and with it trained,
    merged (the merge reloads the base) and served."""
    import shutil

    from finetune import finetune_model
    from neural_chat_app import GenerationConfig, LoadingModelConfig, PipelineConfig, build_chatbot
    from tests.finetune.conftest import tiny_config, write_jsonl

    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "custom_llama.py").write_text(CUSTOM_CODE)
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "tiny_custom", "architectures": ["TinyCustomForCausalLM"],
               "auto_map": {"AutoConfig": "custom_llama.TinyCustomConfig",
                            "AutoModelForCausalLM": "custom_llama.TinyCustomForCausalLM"}}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        models.load_model(str(folder))
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(8)]
    result = finetune_model(tiny_config(folder, write_jsonl(tmp_path / "c.jsonl", rows), tmp_path / "out",
                                        task="chat", max_steps=1, trust_remote_code=True))
    merged = models.load_model(str(result.merged_dir), dtype=torch.float32, trust_remote_code=True)
    assert type(merged).__name__ == "TinyCustomForCausalLM"
    bot = build_chatbot(PipelineConfig(model_name_or_path=str(result.output_dir),
                                       loading_config=LoadingModelConfig(trust_remote_code=True)))
    try:
        assert type(bot.backend.model).__name__ == "TinyCustomForCausalLM"
        assert isinstance(bot.predict("hi", GenerationConfig(max_new_tokens=3, do_sample=False)), str)
    finally:
        bot.close()


@pytest.mark.integration
def test_a_config_naming_code_for_a_family_transformers_has_runs_on_the_native_classes(tmp_path):
    """Phi-3.5-mini's and Phi-4-mini's config.json carry an auto_map to modeling files of their own, which
    transformers does not need (phi3 is native): without trust_remote_code the memory estimate, training and
    serving use the native classes and never ask for that code."""
    from finetune import finetune_model
    from finetune.memory import count_parameters, model_config
    from neural_chat_app import GenerationConfig, PipelineConfig, build_chatbot
    from tests.families import CONVERSATION, save_family
    from tests.finetune.conftest import tiny_config, write_jsonl

    folder = save_family("phi4mini", tmp_path / "phi")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_phi3.Phi3Config",
                          "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"}  # files the folder lacks
    (folder / "config.json").write_text(json.dumps(config))
    assert count_parameters(model_config(folder)) > 0
    rows = [{"messages": [dict(m) for m in CONVERSATION]} for _ in range(8)]
    result = finetune_model(tiny_config(folder, write_jsonl(tmp_path / "c.jsonl", rows), tmp_path / "out",
                                        task="chat", max_steps=1, save_steps=100))
    bot = build_chatbot(PipelineConfig(model_name_or_path=str(result.merged_dir), backend="torch"))
    try:
        assert type(bot.backend.model).__name__ == "Phi3ForCausalLM"
        assert isinstance(bot.predict("hi", GenerationConfig(max_new_tokens=3, do_sample=False)), str)
    finally:
        bot.close()


def test_a_tool_call_ends_gemma_4s_turn_whatever_the_generation_config_says():
    """Gemma 4 writes <|tool_response> after a call: a GGUF's config lacks it, and generation ran on to max_tokens."""
    from types import SimpleNamespace

    from finetune.models import eos_token_ids
    from tests.families import family_tokenizer

    tokenizer = family_tokenizer("gemma4")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|tool_response>"]},
                                 replace_extra_special_tokens=False)
    ids = eos_token_ids(SimpleNamespace(eos_token_id=tokenizer.eos_token_id), tokenizer)
    assert ids[0] == tokenizer.eos_token_id and tokenizer.convert_tokens_to_ids("<|tool_response>") in ids
    llama = family_tokenizer("llama")  # no such token: nothing added
    assert len(eos_token_ids(SimpleNamespace(eos_token_id=None), llama)) == len(set(ids)) - 1
