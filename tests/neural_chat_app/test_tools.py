"""Tool calls out of the formats the model families write, the streaming splitter, and tools into the prompt.

pytest tests/neural_chat_app/test_tools.py
"""

from __future__ import annotations

import json

import pytest

from neural_chat_app.tools import ToolCallSplitter, forced_call_schema, parse_tool_calls, prompt_messages

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


TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
]
# A template that renders tools, as Qwen 2.5's does (shortened): tools in the system turn, calls and results in
# the Hermes tags
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "<tool_call>{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}</tool_call>"
    "{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_that_renders_tools_gets_them_and_the_calls(tiny_model_dir):
    from transformers import AutoTokenizer

    from neural_chat_app.prompts import prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = TOOL_TEMPLATE
    messages, tools = prompt_messages(CONVERSATION, [TOOL], tokenizer)
    assert tools == [TOOL] and messages[2]["role"] == "tool"
    text = tokenizer.decode(prompt_ids(tokenizer, messages, "chat", tools))
    assert '"name": "get_weather", "description": "Weather in a city"' in text
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in text  # a mapping
    assert "<|im_start|>tool\n21 C" in text


def test_a_template_without_tools_gets_them_in_the_system_message(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # the plain ChatML template
    messages, tools = prompt_messages(CONVERSATION, [TOOL], tokenizer)
    assert tools is None
    assert messages[0]["role"] == "system" and '"name": "get_weather"' in messages[0]["content"]
    assert messages[2] == {"role": "assistant",
                           "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                                      "</tool_call>"}
    assert messages[3] == {"role": "user", "content": "Result of the tool call call_1:\n21 C"}
