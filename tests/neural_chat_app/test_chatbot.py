"""build_chatbot on the tiny llama: predict, streaming, history, system prompt, stops, fine-tune folders.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/neural_chat_app/test_chatbot.py
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import warnings

import pytest

from neural_chat_app import GenerationConfig, LoadingModelConfig, MixedPrecisionConfig, PipelineConfig, build_chatbot
from neural_chat_app.prompts import prompt_ids
from neural_chat_app.streaming import StreamResult, apply_stop_strings

GREEDY = GenerationConfig(do_sample=False, max_new_tokens=8)


def test_predict_returns_text_and_stream_matches(tiny_bot):
    text = tiny_bot.predict("what is intel", GREEDY)
    chunks, links = tiny_bot.predict_stream("what is intel", GREEDY)
    assert isinstance(text, str)
    assert links == []
    assert "".join(chunks) == text


def test_return_stats_appends_a_table(tiny_bot):
    chunks, _ = tiny_bot.predict_stream("hello", GenerationConfig(max_new_tokens=4, return_stats=True))
    last = list(chunks)[-1]
    assert "| Output Tokens |" in last and "Throughput" in last


def test_stream_result_counts_tokens_within_the_limit(tiny_bot):
    result = StreamResult()
    ids = prompt_ids(tiny_bot.backend.tokenizer, [{"role": "user", "content": "hi"}], "chat")
    text = "".join(tiny_bot.backend.stream(ids, GREEDY, result, threading.Event()))
    assert result.prompt_tokens == len(ids)
    assert 0 < result.completion_tokens <= GREEDY.max_new_tokens
    assert result.finish_reason in ("stop", "length")
    assert isinstance(text, str)


def test_cancel_stops_generation_early(tiny_bot):
    result, cancel = StreamResult(), threading.Event()
    ids = prompt_ids(tiny_bot.backend.tokenizer, [{"role": "user", "content": "hi"}], "chat")
    stream = tiny_bot.backend.stream(ids, GenerationConfig(do_sample=False, max_new_tokens=400), result, cancel)
    next(stream)
    cancel.set()
    list(stream)
    assert result.completion_tokens < 400


def test_chat_keeps_history_per_conversation(tiny_bot):
    tiny_bot.chat("first question", GREEDY, conversation_id="a")
    tiny_bot.chat("second question", GREEDY, conversation_id="a")
    tiny_bot.chat("other conversation", GREEDY, conversation_id="b")
    history = tiny_bot.conversations["a"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[2]["content"] == "second question"
    assert len(tiny_bot.conversations["b"]) == 2
    tiny_bot.reset_conversation("a")
    assert "a" not in tiny_bot.conversations


def test_system_prompt_reaches_the_prompt(tiny_bot, monkeypatch):
    seen = []
    original = tiny_bot.backend.stream

    def spy(ids, config, result, cancel):
        seen.append(tiny_bot.backend.tokenizer.decode(ids))
        return original(ids, config, result, cancel)

    monkeypatch.setattr(tiny_bot.backend, "stream", spy)
    tiny_bot.set_customized_system_prompts("You are a pirate.")
    try:
        tiny_bot.predict("hello", GREEDY)
    finally:
        tiny_bot.set_customized_system_prompts(None)
    assert "You are a pirate." in seen[0]
    with pytest.raises(TypeError, match="system_prompts"):
        tiny_bot.set_customized_system_prompts(["not", "a", "string"])


def test_empty_query_raises(tiny_bot):
    with pytest.raises(ValueError, match="query"):
        tiny_bot.predict("   ")


def test_stop_strings_cut_the_text_and_cancel():
    cancel = threading.Event()
    out = "".join(apply_stop_strings(iter(["Hello wo", "rld, STO", "P here"]), ["STOP"], cancel))
    assert out == "Hello world, "
    assert cancel.is_set()
    untouched = threading.Event()
    assert "".join(apply_stop_strings(iter(["a", "b", "c"]), ["zz"], untouched)) == "abc"
    assert not untouched.is_set()


def test_stop_string_in_generation(tiny_bot):
    # The tiny model repeats newlines, so a stop at the first newline leaves an empty reply.
    text = tiny_bot.predict("hi", GenerationConfig(do_sample=False, max_new_tokens=20, stop=["\n"]))
    assert "\n" not in text


def test_bf16_falls_back_to_fp32_with_a_warning(tiny_model_dir, monkeypatch):
    import torch

    from finetune import hardware

    avx2_only = dataclasses.replace(hardware.detect_hardware(), amx_bf16=False, avx512_bf16=False, avx512f=False,
                                    avx2=True, onednn_isa_limit=None)
    monkeypatch.setattr(hardware, "detect_hardware", lambda: avx2_only)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bot = build_chatbot(
            PipelineConfig(model_name_or_path=str(tiny_model_dir), optimization_config=MixedPrecisionConfig())
        )
    assert bot.backend.model.dtype == torch.float32
    assert any("fp32" in str(w.message) and "AVX2 only" in str(w.message) for w in caught)
    from neural_chat_app.loading import compute_line

    assert ": fp32, because AVX2 only" in compute_line(bot.backend)  # what the server prints at start


@pytest.fixture(scope="module")
def finetune_output(tiny_model_dir, tmp_path_factory):
    """A folder shaped like finetune_model's output: merged/, adapter/, training_metadata.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("finetune-out")
    shutil.copytree(tiny_model_dir, out / "merged")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(out / "adapter")
    (out / "training_metadata.json").write_text('{"base_model": "tiny"}')
    return out


def test_loads_finetune_output_dir_and_merged_folder(finetune_output):
    for path in (finetune_output, finetune_output / "merged"):
        bot = build_chatbot(PipelineConfig(model_name_or_path=str(path)))
        assert bot.model_id == finetune_output.name
        assert isinstance(bot.predict("hi", GREEDY), str)


def test_loads_base_plus_adapter(tiny_model_dir, finetune_output):
    cfg = PipelineConfig(
        model_name_or_path=str(tiny_model_dir),
        loading_config=LoadingModelConfig(peft_path=str(finetune_output / "adapter")),
    )
    bot = build_chatbot(cfg)
    assert isinstance(bot.predict("hi", GREEDY), str)
    assert not hasattr(bot.backend.model, "peft_config")  # merged into the base weights


def test_torch_backend_refuses_openvino_folder(tmp_path):
    (tmp_path / "openvino_model.xml").write_text("<net/>")
    (tmp_path / "openvino_tokenizer.xml").write_text("<net/>")
    with pytest.raises(ValueError, match="openvino"):
        build_chatbot(PipelineConfig(model_name_or_path=str(tmp_path), backend="torch"))


def test_task_text_continues_and_completion_asks(tiny_bot):
    """'text' is the text as given; 'completion' asks the last query as an instruction: one turn in the chat
    template (after the system message; history dropped), or finetune's Alpaca prompt without a template."""
    from finetune.formatting import completion_prompt

    tokenizer = tiny_bot.backend.tokenizer
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "old question"},
               {"role": "assistant", "content": "old answer"}, {"role": "user", "content": "What is AMX?"}]
    assert tokenizer.decode(prompt_ids(tokenizer, history[-1:], "text")) == "What is AMX?"
    asked = tokenizer.decode(prompt_ids(tokenizer, history, "completion"))
    assert "What is AMX?" in asked and "Be brief." in asked and "old question" not in asked
    assert asked == tokenizer.decode(prompt_ids(tokenizer, [history[0], history[-1]], "chat"))
    template, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        assert tokenizer.decode(prompt_ids(tokenizer, history, "completion")).endswith(completion_prompt(
            "What is AMX?"))
    finally:
        tokenizer.chat_template = template
