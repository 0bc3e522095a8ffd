"""Tool calling end to end for the families whose calls are special tokens or their own syntax: a tiny model of
each is fine-tuned here on a tool-call conversation through finetune's own tokenization (finetune.formatting), then
served, and the official `openai` and `ollama` clients get the call it writes as a parsed tool call, whole and
streamed: Gemma 4's <|tool_call>call:...{...}<tool_call|> (then <|tool_response>, which ends the turn), Ministral 3's
[TOOL_CALLS]name[ARGS]{...} and Qwen 3.5's <tool_call><function=...> with its parameters as text.

pytest tests/neural_chat_app/test_tool_calling_families.py
"""

from __future__ import annotations

import json

import pytest

from tests.families import teach_reply
from tests.neural_chat_app.test_tool_formats import TOOLS, _tokenizer

QUESTION = "Weather in New York for 3 days?"
CALLED = {"city": "New York", "days": 3}  # the integer comes back an integer, also from Qwen 3.5's text
FAMILIES_TAUGHT = ("gemma4", "ministral3", "qwen3_5")


def _teach(family: str, folder):
    """A tiny model taught, through finetune's own tokenization, to call get_weather for QUESTION in its family's
    format (Gemma 4's <|tool_response> stop comes from finetune.models.eos_token_ids)."""
    from finetune.formatting import FormatOptions, tokenize_record

    tokenizer = _tokenizer(family)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(CALLED)}}
    record = {"messages": [{"role": "user", "content": QUESTION},
                           {"role": "assistant", "content": "", "tool_calls": [call]}], "tools": TOOLS}
    example = tokenize_record(tokenizer, record, FormatOptions("chat", 2048))  # Qwen 3.5: ~950 tokens
    return teach_reply(family, tokenizer, example["input_ids"], example["labels"], folder)


@pytest.fixture(scope="module")
def calling_bots(tmp_path_factory):
    from neural_chat_app import PipelineConfig, build_chatbot

    bots = {f: build_chatbot(PipelineConfig(model_name_or_path=str(_teach(f, tmp_path_factory.mktemp(f)))))
            for f in FAMILIES_TAUGHT}
    yield bots
    for bot in bots.values():
        bot.close()


@pytest.fixture(params=FAMILIES_TAUGHT)
def calling_server(request, make_server, calling_bots):
    backend = calling_bots[request.param].backend
    backend.close = lambda: None  # shared by every server in the module
    # a reply learned without reasoning is what a thinking model writes with thinking off (Qwen 3.5 thinks unless told)
    server = make_server(backend=backend, thinking=False)
    server.model = calling_bots[request.param].model_id
    return server


def test_openai_client_gets_the_call_whole_and_streamed(calling_server):
    import openai

    client = openai.OpenAI(base_url=calling_server.url + "/v1", api_key="unused", max_retries=0)
    ask = dict(model="default", messages=[{"role": "user", "content": QUESTION}], tools=TOOLS, temperature=0,
               max_tokens=200)
    reply = client.chat.completions.create(**ask)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert not choice.message.content
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == CALLED
    assert reply.usage.completion_tokens < 200  # the turn ended at the call, not at max_tokens
    calls, content, finish = [], "", None
    for chunk in client.chat.completions.create(**ask, stream=True):
        for c in chunk.choices:
            calls += c.delta.tool_calls or []
            content += c.delta.content or ""
            finish = c.finish_reason or finish
    assert finish == "tool_calls" and not content.strip()
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [("get_weather", CALLED)]


def test_ollama_client_gets_the_call(calling_server):
    import ollama

    client = ollama.Client(host=calling_server.url)
    reply = client.chat(model=calling_server.model, messages=[{"role": "user", "content": QUESTION}], tools=TOOLS,
                        options={"temperature": 0})
    (call,) = reply.message.tool_calls
    assert call.function.name == "get_weather" and dict(call.function.arguments) == CALLED
