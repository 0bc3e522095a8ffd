"""A conversation with tool calls in the form each template renders (finetune/tool_calls.py): the tools, the calls
and their results reach the model whatever its family, with ids the templates accept.

pytest tests/finetune/test_tool_calls.py
"""

from __future__ import annotations

import json

import pytest

from finetune.chat_template import generation_prompt
from finetune.tool_calls import tool_messages
from tests.families import family_tokenizer

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


def _prompt(tokenizer, messages=CONVERSATION, tools=(TOOL,)) -> str:
    messages, tools = tool_messages(messages, list(tools), tokenizer)
    return generation_prompt(tokenizer, messages, **({"tools": tools} if tools else {}))


def test_a_template_that_renders_tools_gets_them_and_the_calls(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = TOOL_TEMPLATE
    messages, tools = tool_messages(CONVERSATION, [TOOL], tokenizer)
    assert tools == [TOOL] and messages[2]["role"] == "tool"
    text = _prompt(tokenizer)
    assert '"name": "get_weather", "description": "Weather in a city"' in text
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in text  # a mapping
    assert "<|im_start|>tool\n21 C" in text


def test_a_template_without_tools_gets_them_in_the_system_message(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # the plain ChatML template
    messages, tools = tool_messages(CONVERSATION, [TOOL], tokenizer)
    assert tools is None
    assert messages[0]["role"] == "system" and '"name": "get_weather"' in messages[0]["content"]
    assert messages[2] == {"role": "assistant",
                           "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                                      "</tool_call>"}
    assert messages[3] == {"role": "user", "content": "Result of the tool call call_1:\n21 C"}


def test_a_conversation_without_tools_is_left_as_it_is(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain = [{"role": "user", "content": "Hi"}]
    assert tool_messages(plain, None, tokenizer) == (plain, None)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "qwen3_5", "mistral", "gemma4", "ministral3",
                                    "phi4mini", "gemma3_text", "phi3"])
def test_every_family_is_told_the_tools_the_call_and_its_result(family):
    """The description, the call's argument and the result are all in the prompt, whatever the family; Mistral
    v0.3's template raised on OpenAI's call ids before they were fitted to its 9 characters."""
    text = _prompt(family_tokenizer(family))
    assert "Weather in a city" in text
    assert "Paris" in text and "21 C" in text


def test_mistral_gets_nine_character_ids_the_same_for_the_call_and_its_result():
    tokenizer = family_tokenizer("mistral")
    messages, _ = tool_messages(CONVERSATION, [TOOL], tokenizer)
    call_id = messages[1]["tool_calls"][0]["id"]
    assert len(call_id) == 9 and call_id.isalnum() and messages[2]["tool_call_id"] == call_id
    assert f'"id": "{call_id}"' in _prompt(tokenizer)


def test_results_without_ids_follow_their_calls_in_order():
    """Ollama's clients send tool results without ids: Gemma 4's template names each result by its call's id."""
    calls = [{"type": "function", "function": {"name": name, "arguments": {}}} for name in ("get_weather", "get_time")]
    messages = [{"role": "user", "content": "Weather and time?"}, {"role": "assistant", "content": "",
                                                                   "tool_calls": calls},
                {"role": "tool", "content": "21 C"}, {"role": "tool", "content": "noon"}]
    fitted, _ = tool_messages(messages, [TOOL], family_tokenizer("gemma4"))
    ids = [c["id"] for c in fitted[1]["tool_calls"]]
    assert len(set(ids)) == 2 and [m["tool_call_id"] for m in fitted[2:]] == ids
    text = _prompt(family_tokenizer("gemma4"), messages)
    assert "response:get_weather{" in text and "response:get_time{" in text


def test_phi4_mini_gets_the_tools_on_its_system_message_and_the_call_as_it_writes_it():
    tokenizer = family_tokenizer("phi4mini")
    messages, tools = tool_messages(CONVERSATION, [TOOL], tokenizer)
    assert tools is None and messages[0]["role"] == "system"
    assert json.loads(messages[0]["tools"]) == [TOOL["function"]]
    assert messages[2]["content"] == 'functools[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    assert '<|tool|>[{"name": "get_weather", "description": "Weather in a city"' in _prompt(tokenizer)
