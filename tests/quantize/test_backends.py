"""Every backend and scheme on the tiny llama: artifact folder named after the scheme, quantization.json with
the measured quality, reload, generate. Plus the bad inputs that need a model.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/quantize/test_backends.py
"""

from __future__ import annotations

import builtins
import json
import math

import pytest
import torch

from quantize import QuantizeConfig, load_quantized, quantize_model, read_metadata

CASES = [
    ("inc", "rtn", {"bits": 4, "group_size": 32}),
    ("inc", "rtn", {"bits": 8, "group_size": -1, "sym": True}),
    ("inc", "gptq", {"bits": 4, "group_size": 32}),
    ("inc", "awq", {"bits": 4, "group_size": 64, "sym": True}),
    ("inc", "autoround", {"bits": 4, "group_size": 32, "sym": True}),
    ("openvino", "rtn", {"bits": 8}),
    ("openvino", "rtn", {"bits": 4, "group_size": 32}),
    ("openvino", "awq_se", {"bits": 4, "ratio": 0.5}),
    ("openvino", "gptq", {"bits": 4, "sym": True}),
    ("openvino", "scale_estimation", {"bits": 4, "all_layers": True}),
    ("gguf", "f16", {}),
    ("gguf", "q8_0", {}),
    ("gguf", "q4_0", {}),
    ("gguf", "q4_1", {}),
]
CALIBRATED = {"gptq", "awq", "autoround", "awq_se", "scale_estimation"}
EXPECTED_FILES = {"inc": ["qconfig.json", "quantized_weight.pt", "config.json", "tokenizer.json"],
                  "openvino": ["openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml",
                               "openvino_detokenizer.xml"],
                  "gguf": ["Modelfile", "tokenizer.json"]}


def _generate(backend: str, path, prompt_ids):
    if backend == "openvino":
        import openvino_genai

        pipe = openvino_genai.LLMPipeline(str(path), "CPU")
        return pipe.generate("hello", max_new_tokens=4, do_sample=False)
    model, tokenizer, _ = load_quantized(path)
    out = model.generate(prompt_ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    return tokenizer.decode(out[0, prompt_ids.shape[1]:])


@pytest.mark.parametrize(("backend", "scheme", "fields"), CASES,
                         ids=[f"{b}-{s}-{'-'.join(f'{k}{v}' for k, v in f.items())}" for b, s, f in CASES])
def test_backend_writes_a_measured_artifact_that_reloads_and_generates(
        backend, scheme, fields, tiny_model_dir, tiny_real_vocab_dir, messages_file, artifacts_dir, quick):
    model_dir = tiny_real_vocab_dir if backend == "gguf" else tiny_model_dir  # a vocabulary llama.cpp knows
    if backend == "inc":
        pytest.importorskip("neural_compressor")
    if scheme == "autoround":
        pytest.importorskip("auto_round")
    if backend == "openvino":
        pytest.importorskip("optimum.intel")
        pytest.importorskip("openvino_genai")
    calibration = str(messages_file) if scheme in CALIBRATED else None
    cfg = QuantizeConfig(model=str(model_dir), output_dir=str(artifacts_dir), backend=backend, scheme=scheme,
                         calibration_file=calibration, **fields, **quick)
    path = quantize_model(cfg)

    assert path.name == f"{model_dir.name}-{cfg.tag}-{cfg.suffix}"
    for name in EXPECTED_FILES[backend] if scheme != "autoround" else ["config.json", "model.safetensors"]:
        assert (path / name).is_file(), name
    meta = read_metadata(path)
    assert (meta["backend"], meta["scheme"], meta["bits"], meta["group_size"]) == (
        backend, scheme, cfg.bits, cfg.group_size)
    assert meta["size_bytes"] > meta["weight_bytes"] > 0
    if calibration:
        assert len(meta["calibration"]["sha256"]) == 64 and meta["calibration"]["blocks"] >= 1
    else:
        assert meta["calibration"] is None
    quality = meta["quality"]
    assert math.isfinite(quality["perplexity"]) and quality["source_perplexity"] > 1
    assert quality["perplexity_delta_pct"] == pytest.approx(
        100 * (quality["perplexity"] / quality["source_perplexity"] - 1), abs=0.02)
    assert 0.0 <= quality["token_agreement"] <= 1.0 and quality["num_prompts"] == 2
    assert meta["speed"]["decode_tokens_per_s"] > 0 and meta["speed"]["first_token_ms"] > 0
    assert not list(artifacts_dir.glob("*.tmp-*"))
    prompt = torch.tensor([[5, 6, 7, 8]])
    text = _generate(backend, path, prompt)
    assert isinstance(text, str) and text


def test_quantized_weights_are_smaller_and_int8_is_faithful(artifact):
    pytest.importorskip("optimum.intel")
    int8 = read_metadata(artifact(backend="openvino", bits=8))
    int4 = read_metadata(artifact(backend="openvino", bits=4, group_size=32))
    assert int4["weight_bytes"] < int8["weight_bytes"] < int8["source_weight_bytes"]
    assert abs(int8["quality"]["perplexity_delta_pct"]) < 1.0
    assert int8["quality"]["token_agreement"] == 1.0


def test_inc_int8_is_faithful_where_its_asymmetric_packing_is_not(artifact):
    """INT8 through Neural Compressor is symmetric (QuantizeConfig refuses sym=False there): faithful to the source.
    The reason, checked on the library itself: its asymmetric 8-bit weights come back far from the originals. When
    this stops holding, the refusal can go."""
    q = pytest.importorskip("neural_compressor.torch.quantization")
    meta = read_metadata(artifact(backend="inc", bits=8))
    assert meta["sym"] is True
    assert abs(meta["quality"]["perplexity_delta_pct"]) < 0.5 and meta["quality"]["token_agreement"] == 1.0

    torch.manual_seed(0)
    errors = {}
    for sym in (True, False):
        layer = torch.nn.Sequential(torch.nn.Linear(128, 256, bias=False))
        weight = layer[0].weight.detach().clone()
        config = q.RTNConfig(bits=8, group_size=64, use_sym=sym, use_layer_wise=False)
        with torch.no_grad():
            recovered = q.convert(q.prepare(layer, config))[0].recover()
        errors[sym] = float((recovered - weight).norm() / weight.norm())
    assert errors[True] < 0.01 and errors[False] > 0.1, errors


def test_gguf_f16_reloads_through_transformers_with_the_same_greedy_tokens(tiny_real_vocab_dir, artifacts_dir,
                                                                          quick):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = quantize_model(model=str(tiny_real_vocab_dir), output_dir=str(artifacts_dir), backend="gguf",
                          scheme="f16", **quick)
    gguf_name = "model-f16.gguf"
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_name).float()
    source = AutoModelForCausalLM.from_pretrained(tiny_real_vocab_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_real_vocab_dir)
    gguf_tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_name)
    text = "What is the capital of France?"
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert gguf_tokenizer(text, add_special_tokens=False).input_ids == ids[0].tolist()
    want = source.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    got = model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert got.tolist() == want.tolist()
    assert read_metadata(path)["quality"]["token_agreement"] == 1.0


def test_modelfile_has_the_chatml_template_and_stop_tokens(tiny_real_vocab_dir, artifacts_dir, quick):
    path = quantize_model(model=str(tiny_real_vocab_dir), output_dir=str(artifacts_dir), backend="gguf",
                          scheme="q8_0", **quick)
    text = (path / "Modelfile").read_text()
    assert text.startswith("FROM ./model-q8_0.gguf\n")
    assert "<|im_start|>{{ if eq .Role \"tool\" }}user{{ else }}{{ .Role }}{{ end }}\n" in text
    assert text.rstrip().endswith("<|im_start|>assistant\n\"\"\"") is False
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|im_start|>"' in text


def test_modelfile_keeps_a_default_system_prompt():
    from quantize.ollama import default_system_prompt

    template = ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant "
                "named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}")
    assert default_system_prompt(template) == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert default_system_prompt(None) is None


def test_group_size_that_does_not_divide_a_layer_is_refused(tiny_model_dir, tmp_path):
    # The tiny llama has widths 64 (hidden) and 128 (MLP): 48 divides neither.
    with pytest.raises(ValueError, match=r"group_size=48 does not divide the input width of layers \['Linear\(128\)', "
                                         r"'Linear\(64\)'\]"):
        quantize_model(model=str(tiny_model_dir), output_dir=str(tmp_path), backend="inc", group_size=48)
    assert not any(tmp_path.iterdir())


def test_quantizing_an_artifact_again_is_refused(tiny_model_dir, tiny_real_vocab_dir, artifacts_dir, tmp_path, quick):
    path = quantize_model(model=str(tiny_real_vocab_dir), output_dir=str(artifacts_dir), backend="gguf",
                          scheme="q4_0", **quick)
    with pytest.raises(ValueError, match="already quantized: it is a gguf q4_0 artifact"):
        quantize_model(model=str(path), output_dir=str(tmp_path), backend="inc")
    with pytest.raises(ValueError, match="GGUF file"):
        quantize_model(model=str(path / "model-q4_0.gguf"), output_dir=str(tmp_path), backend="inc")
    hf_quantized = tmp_path / "hf"
    hf_quantized.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (hf_quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"quantization_config \(gptq\)"):
        quantize_model(model=str(hf_quantized), output_dir=str(tmp_path), backend="openvino")


@pytest.mark.parametrize(("backend", "module", "hint"), [
    ("inc", "neural_compressor", "pip install 'neural-compressor[pt]==3.10'"),
    ("openvino", "optimum", "pip install 'optimum-intel[openvino]==2.2.0'"),
    ("gguf", "gguf", "pip install gguf==0.19.0"),
])
def test_missing_backend_says_what_to_install(backend, module, hint, monkeypatch, tiny_model_dir, tmp_path):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named '{module}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    scheme = "f16" if backend == "gguf" else "rtn"
    with pytest.raises(ImportError, match=hint.replace("[", r"\[").replace("]", r"\]")):
        quantize_model(model=str(tiny_model_dir), output_dir=str(tmp_path), backend=backend, scheme=scheme)


def test_calibration_reads_messages_and_text(tiny_model_dir, messages_file, text_file):
    from transformers import AutoTokenizer

    from quantize.api import calibration_blocks
    from quantize.calibration import read_texts, texts_sha256

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    chats = read_texts(messages_file, tokenizer)
    assert len(chats) == 18 and chats[0].startswith("<|im_start|>user\nWhat is 0 plus 0?")
    assert read_texts(text_file) == ["The quick brown fox jumps over the lazy dog.",
                                     "Intel Xeon processors run bfloat16.",
                                     "What is the capital of France? The capital of France is Paris."]
    assert texts_sha256(chats) != texts_sha256(chats[1:])
    blocks = calibration_blocks(chats, tokenizer, QuantizeConfig(backend="inc", calibration_seq_len=16,
                                                                 num_calibration_samples=5))
    assert len(blocks) == 5 and all(b.shape == (1, 16) for b in blocks)


def test_bad_calibration_file_names_the_line(tmp_path):
    from quantize.calibration import read_texts

    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"foo": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: expected a 'messages' list"):
        read_texts(path)


def test_a_finetune_output_folder_is_quantized_from_its_merged_model(tiny_real_vocab_dir, tmp_path, quick):
    import shutil

    run = tmp_path / "my-run"
    shutil.copytree(tiny_real_vocab_dir, run / "merged")
    (run / "adapter").mkdir()
    (run / "training_metadata.json").write_text('{"task": "chat"}')
    path = quantize_model(model=str(run), output_dir=str(tmp_path / "q"), backend="gguf", scheme="q8_0", **quick)
    assert path.name == "my-run-q8_0-gguf"
    meta = read_metadata(path)
    assert meta["source_model"] == str((run / "merged").resolve())
    assert meta["finetune_metadata"] == str((run / "training_metadata.json").resolve())

    adapter_only = tmp_path / "adapter-run"
    (adapter_only / "adapter").mkdir(parents=True)
    (adapter_only / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="LoRA adapter but no merged/ model"):
        quantize_model(model=str(adapter_only), output_dir=str(tmp_path / "q"), backend="gguf", scheme="q8_0")


def test_task_metric_of_source_and_artifact_is_recorded(tiny_real_vocab_dir, messages_file, tmp_path, quick):
    path = quantize_model(model=str(tiny_real_vocab_dir), output_dir=str(tmp_path), backend="gguf", scheme="q8_0",
                          task_data=str(messages_file), task="chat", task_max_examples=2, **quick)
    metric = read_metadata(path)["task_metric"]
    assert (metric["task"], metric["examples"]) == ("chat", 2)
    assert set(metric["source"]) == set(metric["artifact"]) >= {"bleu", "rougeL", "exact_match"}
    assert (path / "task_eval").is_dir()
    with pytest.raises(NotImplementedError, match="not Neural Compressor's quantized_weight.pt"):
        QuantizeConfig(backend="inc", task_data=str(messages_file), task="chat")


def test_remeasure_rewrites_the_measurements_of_an_existing_artifact(artifact, tiny_real_vocab_dir):
    from quantize.api import remeasure

    path = artifact(model=str(tiny_real_vocab_dir), backend="gguf", scheme="q8_0")
    before = read_metadata(path)
    after = remeasure(path)
    assert after["measured_at"] > before["created_at"]
    assert read_metadata(path)["measured_at"] == after["measured_at"]
    assert after["quality"]["perplexity"] == pytest.approx(before["quality"]["perplexity"], rel=1e-4)
    assert after["tag"] == before["tag"] and after["calibration"] == before["calibration"]


def test_inc_reload_restores_the_weights_it_did_not_quantize(tiny_model_dir, tmp_path, quick):
    """INC's load rebuilds only the quantized modules: embeddings and norms must come from the saved file."""
    import shutil

    from transformers import AutoModelForCausalLM

    from quantize.inc import load_inc

    pytest.importorskip("neural_compressor")
    source = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for name, param in source.named_parameters():
            if "norm" in name:
                param.mul_(torch.rand_like(param) + 0.5)  # norms that are not the init value of 1
    source.save_pretrained(tmp_path / "src")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, tmp_path / "src" / name)
    path = quantize_model(model=str(tmp_path / "src"), output_dir=str(tmp_path), backend="inc", bits=8,
                          group_size=-1, evaluate=False)
    loaded = load_inc(path)
    for name, param in source.named_parameters():
        if "norm" in name or "embed" in name:
            assert torch.equal(loaded.get_parameter(name), param), name
    from neural_compressor.torch.quantization import RTNConfig, convert, prepare

    in_memory = convert(prepare(source, RTNConfig(bits=8, group_size=-1, use_sym=True, use_layer_wise=False)))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, in_memory(ids).logits, atol=1e-5)  # the reload is the same model


def test_k_quants_without_llama_cpp_say_how_to_get_it(monkeypatch, tmp_path):
    import builtins

    from quantize.gguf_export import k_quantize

    real_import = builtins.__import__

    def no_llama_cpp(name, *args, **kwargs):
        if name == "llama_cpp":
            raise ImportError("No module named 'llama_cpp'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_llama_cpp)
    with pytest.raises(ImportError, match=r"q4_k_m.*python -m benchmarks.llamacpp build.*or use q8_0 / q4_0 / q4_1"):
        k_quantize(tmp_path / "model-f16.gguf", tmp_path / "model-q4_k_m.gguf", "q4_k_m")
