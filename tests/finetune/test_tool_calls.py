"""A conversation with tool calls in the form each template renders (finetune/tool_calls.py): the tools, the calls
and their results reach the model whatever its family, with ids the templates accept.

pytest tests/finetune/test_tool_calls.py
"""

from __future__ import annotations

import json

import pytest

from finetune.chat_template import generation_prompt
from finetune.records import DataError
from finetune.tool_calls import tool_messages
from tests.families import TEMPLATE_NAMES, family_tokenizer

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


# Training on conversations with tool calls: what is learned is each reply with its calls in the family's format
# and its end of turn, never the tools' description, the question or a tool's result.
WEATHER_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "get_time", "description": "The time now", "parameters": {
        "type": "object", "properties": {}}}},
]
TOOL_CONVERSATION = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "How warm is Oslo?"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "call_7", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Oslo", "days": 2}'}}]},
    {"role": "tool", "tool_call_id": "call_7", "content": "minus 4 degrees"},
    {"role": "assistant", "content": "Oslo is at minus 4."},
]


def _learned(family: str, messages: list[dict], tools=WEATHER_TOOLS):
    from finetune.formatting import FormatOptions, tokenize_record
    from tests.neural_chat_app.test_tool_formats import _tokenizer

    tokenizer = _tokenizer(family)
    record = {"messages": messages, **({"tools": tools} if tools is not None else {})}
    example = tokenize_record(tokenizer, record, FormatOptions("chat", 2048))
    learned = tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"]) if label != -100])
    return tokenizer, example, learned


@pytest.mark.parametrize("family", TEMPLATE_NAMES)
def test_a_tool_call_and_the_answer_after_its_result_are_learned_and_nothing_else(family):
    tokenizer, example, learned = _learned(family, TOOL_CONVERSATION)
    assert "Oslo" in learned and "get_weather" in learned and "2" in learned, learned  # the call, in its format
    assert "Oslo is at minus 4." in learned
    for unlearned in ("minus 4 degrees", "How warm", "Weather in a city", "one short sentence"):
        assert unlearned not in learned, (unlearned, learned)
    text = tokenizer.decode(example["input_ids"])
    assert "minus 4 degrees" in text and "Weather in a city" in text


@pytest.mark.parametrize("family", TEMPLATE_NAMES)
def test_a_learned_call_is_what_serving_reads_as_the_call(family):
    """The labelled tokens of a last reply that calls a tool follow the generation prompt serving renders, and
    they parse back into the same call: training teaches the continuation serving asks for and reads."""
    from neural_chat_app.tools import parse_tool_calls

    conversation = TOOL_CONVERSATION[1:3]
    tokenizer, example, _ = _learned(family, conversation)
    full = tokenizer.decode(example["input_ids"])
    prompt = _prompt(tokenizer, conversation[:1], WEATHER_TOOLS)
    assert full.startswith(prompt), (full, prompt)
    labels = example["labels"]
    first = next(i for i, label in enumerate(labels) if label != -100)
    assert tokenizer.decode(example["input_ids"][:first]) == prompt
    written = tokenizer.decode(example["input_ids"][first:], skip_special_tokens=False)
    _, calls = parse_tool_calls(written.split(tokenizer.eos_token)[0], {"get_weather": WEATHER_TOOLS[0]["function"][
        "parameters"], "get_time": {}})
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Oslo", "days": 2}], written


def test_records_with_tools_are_checked_by_name():
    from finetune.records import Record, check_records

    bad = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "x"},
                      {"role": "assistant", "content": "ok"}]},
        {"messages": TOOL_CONVERSATION, "tools": [{"type": "function", "function": {"name": "get_time"}}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "get_time", "arguments": "[1, 2]"}}]}]},
        {"messages": TOOL_CONVERSATION, "tools": "{not json"},
    ]
    with pytest.raises(DataError) as err:
        check_records([Record(r, f"data.jsonl:{n + 1}") for n, r in enumerate(bad)], "chat", "data.jsonl")
    message = str(err.value)
    assert "data.jsonl:1: messages[1] is a tool result with no assistant tool_calls before it" in message
    assert "data.jsonl:2: messages[2].tool_calls[0] calls 'get_weather', which the record's tools do not define" \
        in message
    assert "data.jsonl:3: messages[1].tool_calls[0].function.arguments must be a JSON object" in message
    assert "data.jsonl:4: tools is a string that is not JSON" in message
    good = [{"messages": TOOL_CONVERSATION, "tools": json.dumps(WEATHER_TOOLS)}, {"messages": TOOL_CONVERSATION}]
    check_records([Record(r, "ok.jsonl") for r in good], "chat", "ok.jsonl")
