"""Thinking models: the reasoning kept apart from the answer, in the chatbot, the OpenAI and Ollama routes and the
log, and thinking switched on and off through the chat template.

The models are tiny ones taught here, in a few dozen steps, to reason before they answer in their family's own
format, after the generation prompt of its published template: Qwen 3.5's (the prompt opens <think>, the model
closes it) and Gemma 4's (the model writes the thought channel, whose markers are special tokens).

pytest tests/neural_chat_app/test_reasoning.py
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from neural_chat_app.config import GenerationConfig
from neural_chat_app.reasoning import (
    ReasoningSplitter,
    check_thinking,
    default_thinking,
    marker_tokens,
    opened_by_prompt,
    split_reasoning,
    thinking_format,
)
from neural_chat_app.streaming import Detokenizer
from tests.families import family_tokenizer, teach_reply

QUESTION = "What is 2 and 2?"
# what each model is taught to write after its generation prompt (thinking on): reasoning, then the answer
TAUGHT = {"qwen3_5": "Add them up.\n</think>\n\nIt is 4.<|im_end|>",
          "gemma4": "<|channel>thought\nAdd them up.\n<channel|>It is 4.<turn|>"}
GREEDY = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=40)


def _teach(family: str, folder):
    from finetune.chat_template import generation_prompt

    tokenizer = family_tokenizer(family)
    prompt = generation_prompt(tokenizer, [{"role": "user", "content": QUESTION}], thinking=True)
    n = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    ids = tokenizer(prompt + TAUGHT[family], add_special_tokens=False).input_ids
    return teach_reply(family, tokenizer, ids, [-100] * n + ids[n:], folder)


@pytest.fixture(scope="module")
def thinking_bots(tmp_path_factory):
    from neural_chat_app import PipelineConfig, build_chatbot

    bots = {family: build_chatbot(PipelineConfig(model_name_or_path=str(_teach(
        family, tmp_path_factory.mktemp(family))))) for family in TAUGHT}
    yield bots
    for bot in bots.values():
        bot.close()


# ---- the format, from the template ------------------------------------------------------------------------------


def test_each_family_s_markers_and_switch_come_from_its_template():
    assert thinking_format(family_tokenizer("qwen3")).open == "<think>"
    assert thinking_format(family_tokenizer("qwen3_5")).switch
    gemma = thinking_format(family_tokenizer("gemma4"))
    assert (gemma.open, gemma.close, gemma.switch) == ("<|channel>thought", "<channel|>", True)
    ministral = thinking_format(family_tokenizer("ministral3"))
    assert (ministral.open, ministral.close, ministral.switch) == ("[THINK]", "[/THINK]", False)
    for family in ("llama", "qwen2", "mistral", "gemma3_text", "phi3"):
        assert thinking_format(family_tokenizer(family)) is None, family


def test_a_setting_the_model_cannot_follow_is_refused():
    with pytest.raises(ValueError, match="does not think"):
        check_thinking(family_tokenizer("qwen2"), True)
    with pytest.raises(ValueError, match="always thinks"):
        check_thinking(family_tokenizer("ministral3"), False)
    check_thinking(family_tokenizer("qwen2"), False)  # off is what a model that does not think does
    for value in (True, False, None):
        check_thinking(family_tokenizer("qwen3_5"), value)
    with pytest.raises(TypeError, match="thinking"):
        GenerationConfig(thinking="yes")


def test_qwen3_5_s_prompt_opens_the_block_unless_thinking_is_off():
    from neural_chat_app.prompts import prompt_ids

    tokenizer = family_tokenizer("qwen3_5")
    fmt = thinking_format(tokenizer)
    messages = [{"role": "user", "content": QUESTION}]
    assert opened_by_prompt(tokenizer, prompt_ids(tokenizer, messages, "chat"), fmt) == "<think>"
    off = prompt_ids(tokenizer, messages, "chat", thinking=False)
    assert opened_by_prompt(tokenizer, off, fmt) == ""
    assert tokenizer.decode(off).endswith("<think>\n\n</think>\n\n")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_the_splitter_gives_the_same_parts_however_the_text_is_cut(size):
    fmt = thinking_format(family_tokenizer("qwen3_5"))
    raw = "<think>\nFirst add.\nThen check. </think>\n\nIt is 4, see </think"
    splitter, parts = ReasoningSplitter(fmt), []
    for i in range(0, len(raw), size):
        parts += splitter.feed(raw[i : i + size])
    parts += splitter.finish()
    reasoning = "".join(t for k, t in parts if k == "reasoning")
    answer = "".join(t for k, t in parts if k == "content")
    assert (reasoning, answer) == ("First add.\nThen check.", "It is 4, see </think")
    assert raw[splitter.content_from:] == answer


def test_a_reply_cut_short_while_thinking_has_no_answer_and_a_plain_one_no_reasoning():
    fmt = thinking_format(family_tokenizer("qwen3"))
    assert split_reasoning("<think>\nStill going", fmt) == ("Still going", "")
    assert split_reasoning("  Just the answer <think>", fmt) == ("", "Just the answer <think>")
    assert split_reasoning("<thi", fmt) == ("", "")  # cut inside the opener: nothing to show
    assert split_reasoning("<think>x</think>y", None) == ("", "<think>x</think>y")


def test_special_marker_tokens_survive_detokenizing():
    """Gemma 4's channel markers are special tokens, which decoding skips: without them the reasoning would run
    into the answer."""
    tokenizer = family_tokenizer("gemma4")
    assert set(marker_tokens(tokenizer).values()) == {"<|channel>", "<channel|>"}
    ids = tokenizer("<|channel>thought\nAdd.<channel|>It is 4.<turn|>", add_special_tokens=False).input_ids
    detokenizer = Detokenizer(tokenizer)
    text = "".join(detokenizer.add(i) for i in ids)
    assert text == "<|channel>thought\nAdd.<channel|>It is 4."  # <turn|> is no marker: skipped as before
    assert split_reasoning(text, thinking_format(tokenizer)) == ("Add.", "It is 4.")


# ---- the chatbot ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(TAUGHT))
def test_the_chatbot_answers_without_its_reasoning_and_gives_both_when_asked(thinking_bots, family):
    bot = thinking_bots[family]
    config = GenerationConfig(**{**GREEDY.__dict__, "thinking": True})
    assert bot.predict(QUESTION, config) == "It is 4."
    assert "".join(bot.predict_stream(QUESTION, config)[0]) == "It is 4."
    assert bot.predict_with_reasoning(QUESTION, config) == ("Add them up.", "It is 4.")
    assert bot.chat(QUESTION, config, conversation_id="c") == "It is 4."
    assert bot.conversations["c"][-1] == {"role": "assistant", "content": "It is 4."}


def test_the_chatbot_refuses_thinking_for_a_model_that_does_not_think(tiny_bot):
    with pytest.raises(ValueError, match="does not think"):
        tiny_bot.predict("Hi", GenerationConfig(thinking=True, max_new_tokens=2))


# ---- the server -------------------------------------------------------------------------------------------------


@pytest.fixture
def thinking_server(make_server, thinking_bots):
    backend = thinking_bots["qwen3_5"].backend
    backend.close = lambda: None  # shared by every server in the module
    server = make_server(backend=backend)
    server.model = thinking_bots["qwen3_5"].model_id
    return server


def _openai(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused")


def test_openai_reply_carries_reasoning_content_apart_and_the_log_keeps_it_out_of_the_text(thinking_server,
                                                                                          tmp_path):
    client = _openai(thinking_server)
    messages = [{"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model=thinking_server.model, messages=messages, temperature=0)
    message = reply.choices[0].message
    assert message.content == "It is 4."
    assert message.model_extra["reasoning_content"] == "Add them up."
    with sqlite3.connect(tmp_path / "chatlog.sqlite") as db:
        text, metadata = db.execute("SELECT content, metadata FROM messages WHERE role = 'assistant'").fetchone()
    assert text == "It is 4." and json.loads(metadata)["reasoning"] == "Add them up."


def test_openai_stream_sends_reasoning_deltas_then_content(thinking_server):
    stream = _openai(thinking_server).chat.completions.create(
        model=thinking_server.model, messages=[{"role": "user", "content": QUESTION}], temperature=0, stream=True)
    reasoning, content, order = "", "", []
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if (delta.model_extra or {}).get("reasoning_content"):
            reasoning += delta.model_extra["reasoning_content"]
            order.append("r")
        if delta.content:
            content += delta.content
            order.append("c")
    assert (reasoning, content) == ("Add them up.", "It is 4.")
    assert order == sorted(order, reverse=True)  # every reasoning delta before the first content delta


def test_thinking_is_switched_off_through_the_template(thinking_server):
    """reasoning_effort "none" and chat_template_kwargs enable_thinking false render Qwen 3.5's closed empty
    block: the prompt is longer by it, and the reply has no reasoning."""
    client = _openai(thinking_server)
    messages = [{"role": "user", "content": QUESTION}]
    on = client.chat.completions.create(model=thinking_server.model, messages=messages, temperature=0, max_tokens=4)
    for extra in ({"reasoning_effort": "none"}, {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}):
        off = client.chat.completions.create(model=thinking_server.model, messages=messages, temperature=0,
                                             max_tokens=4, **extra)
        assert off.usage.prompt_tokens > on.usage.prompt_tokens
        assert not (off.choices[0].message.model_extra or {}).get("reasoning_content")


@pytest.mark.parametrize(("extra", "named"), [
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"extra_body": {"chat_template_kwargs": {"add_vision_id": True}}}, "chat_template_kwargs.add_vision_id"),
    ({"extra_body": {"chat_template_kwargs": {"enable_thinking": "yes"}}}, "enable_thinking"),
])
def test_what_cannot_be_honoured_is_refused_by_name(thinking_server, extra, named):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        _openai(thinking_server).chat.completions.create(
            model=thinking_server.model, messages=[{"role": "user", "content": QUESTION}], **extra)
    assert named in str(err.value)


def test_thinking_on_for_a_model_that_does_not_think_is_a_400(make_server):
    import openai

    with pytest.raises(openai.BadRequestError, match="does not think"):
        server = make_server()
        _openai(server).chat.completions.create(
            model=server.state.models.active.model_id, messages=[{"role": "user", "content": "Hi"}],
            extra_body={"chat_template_kwargs": {"enable_thinking": True}})


def test_ollama_client_gets_thinking_apart(thinking_server):
    import ollama

    client = ollama.Client(host=thinking_server.url)
    assert client.show(thinking_server.model).capabilities == ["completion", "thinking"]
    options = {"temperature": 0}
    model, messages = thinking_server.model, [{"role": "user", "content": QUESTION}]
    reply = client.chat(model=model, messages=messages, think=True, options=options)
    assert (reply.message.thinking, reply.message.content) == ("Add them up.", "It is 4.")
    parts = list(client.chat(model=model, messages=messages, think=True, options=options, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == "Add them up."
    assert "".join(p.message.content for p in parts) == "It is 4."
    generated = client.generate(model=model, prompt=QUESTION, think=True, options=options)
    assert (generated.thinking, generated.response) == ("Add them up.", "It is 4.")
    # the reply goes back into the history with its thinking, as the client's chat loops send it
    follow = [{"role": "user", "content": QUESTION}, reply.message, {"role": "user", "content": QUESTION}]
    assert client.chat(model=model, messages=follow, options=options).done


def test_the_server_s_default_turns_thinking_off_unless_a_request_says_otherwise(make_server, thinking_bots):
    backend = thinking_bots["qwen3_5"].backend
    backend.close = lambda: None
    client = _openai(make_server(backend=backend, thinking=False))
    model, messages = thinking_bots["qwen3_5"].model_id, [{"role": "user", "content": QUESTION}]
    off = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=4)
    on = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                        extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert off.usage.prompt_tokens > on.usage.prompt_tokens  # the closed empty block
    assert on.choices[0].message.model_extra["reasoning_content"] == "Add them up."
    # a model that always thinks ignores the default rather than failing every request
    assert default_thinking(family_tokenizer("ministral3"), False) is None
    assert default_thinking(family_tokenizer("qwen2"), False) is False


def test_a_tool_call_after_reasoning_is_parsed_from_the_answer(make_server):
    """Qwen 3 reasons, then calls: the call is parsed out of the answer, the reasoning stays apart, streamed or
    not."""
    from tests.neural_chat_app.test_server_ollama import WEATHER, FixedTextBackend

    text = '<think>\nThe user wants the weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": ' \
           '{"city": "Paris"}}\n</tool_call>'
    server = make_server(backend=FixedTextBackend(family_tokenizer("qwen3"), text))
    client = _openai(server)
    kwargs = {"model": "fixed", "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER]}
    message = client.chat.completions.create(**kwargs).choices[0].message
    assert message.model_extra["reasoning_content"] == "The user wants the weather."
    assert message.content is None and message.tool_calls[0].function.name == "get_weather"
    reasoning, calls, content = "", [], ""
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is not None:
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            calls += delta.tool_calls or []
            content += delta.content or ""
    assert reasoning == "The user wants the weather." and content == ""
    assert [c.function.name for c in calls] == ["get_weather"]
