"""Tool calls out of the formats the model families write, the streaming splitter, and the forced-call schemas.

pytest tests/neural_chat_app/test_tools.py
"""

from __future__ import annotations

import json

import pytest

from neural_chat_app.tools import ToolCallSplitter, forced_call_schema, parse_tool_calls

NAMES = {"get_weather", "get_time"}
ARGS = {"city": "Paris"}


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',  # Qwen 2.5/3, Hermes
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',  # Llama 3.1/3.2 JSON
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',  # Mistral / Phi-4 once special tokens go
    '[TOOL_CALLS] [{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}]',
])
def test_each_familys_call_format_is_parsed(text):
    content, calls = parse_tool_calls(text, NAMES)
    assert content is None
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert json.loads(calls[0]["function"]["arguments"]) == ARGS


def test_text_before_a_tagged_call_is_kept_and_parallel_calls_are_all_returned():
    text = ('Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    content, calls = parse_tool_calls(text, NAMES)
    assert content == "Let me check."
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert len(parse_tool_calls(text, NAMES, parallel=False)[1]) == 1


@pytest.mark.parametrize("text", [
    "The weather is fine.",
    '{"name": "delete_everything", "arguments": {}}',  # not an offered tool
    '{"answer": 42}',
    "<tool_call>not json</tool_call>",
])
def test_plain_replies_stay_content(text):
    assert parse_tool_calls(text, NAMES) == (text, [])


def _split(chunks):
    splitter = ToolCallSplitter(NAMES)
    streamed = "".join(splitter.feed(c) for c in chunks)
    rest, calls = splitter.finish()
    return streamed + rest, calls


def test_the_splitter_streams_text_and_holds_calls():
    assert _split(["The wea", "ther is <b>", " fine"]) == ("The weather is <b> fine", [])
    text, calls = _split(["Sure. <tool", "_call>{\"name\": \"get_time\", ", "\"arguments\": {}}</tool_call>"])
    assert text == "Sure. " and calls[0]["function"]["name"] == "get_time"
    text, calls = _split(['{"name": "get_time",', ' "arguments": {}}'])
    assert text == "" and len(calls) == 1
    assert _split(['{"answer":', " 42}"]) == ('{"answer": 42}', [])  # held, then sent as content


def test_forced_schemas():
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "get_weather"}}]
    named = forced_call_schema(tools, {"type": "function", "function": {"name": "get_time"}}, True)
    assert named["properties"]["name"] == {"const": "get_time"}
    required = forced_call_schema(tools, "required", True)
    assert required["type"] == "array" and len(required["items"]["anyOf"]) == 2
    assert "anyOf" in forced_call_schema(tools, "required", False)
    assert forced_call_schema(tools, "auto", True) is None
