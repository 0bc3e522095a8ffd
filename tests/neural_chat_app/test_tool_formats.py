"""Tool calls in every family's own format, read back from what its published chat template writes for a call in
the history (that is the format the model was trained to write): whole, through the detokenizer, and streamed.

pytest tests/neural_chat_app/test_tool_formats.py
"""

from __future__ import annotations

import json
import os

import pytest

from finetune.chat_template import generation_prompt, render_chat
from finetune.tool_calls import template_renders_tools, tool_messages
from neural_chat_app.streaming import Detokenizer
from neural_chat_app.tools import ToolCallSplitter, parse_tool_calls
from tests.families import FAMILIES, TEMPLATE_NAMES, family_tokenizer

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "The time now", "parameters": {
        "type": "object", "properties": {}}}},
]
OFFERED = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
WEATHER = {"name": "get_weather", "arguments": {"city": "New York", "days": 3}}  # a string with a space, an integer
TIME = {"name": "get_time", "arguments": {}}
# The special tokens of the real tokenizers that the templates write around a call (the tests' tokenizers have the
# families' other special tokens already).
CALL_TOKENS = {
    "llama": ["<|python_tag|>", "<|eom_id|>"],
    "mistral": ["[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"],
    "ministral3": ["[TOOL_CALLS]", "[ARGS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
                   "[/TOOL_RESULTS]"],
    "gemma4": ["<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>'],
    "phi4mini": ["<|tool|>", "<|/tool|>", "<|tool_call|>", "<|/tool_call|>"],
}
TOOL_FAMILIES = [f for f in TEMPLATE_NAMES if template_renders_tools(family_tokenizer(f))]
SINGLE_CALL = {"llama"}  # Llama 3.x's template refuses more than one call in a turn


def _tokenizer(family: str):
    tokenizer = family_tokenizer(family)
    if CALL_TOKENS.get(family):
        tokenizer.add_special_tokens({"additional_special_tokens": CALL_TOKENS[family]},
                                     replace_extra_special_tokens=False)
    return tokenizer


def _openai(call: dict, n: int) -> dict:
    return {"id": f"call_{n}", "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}


def written(tokenizer, family: str, calls: list[dict], content: str = "") -> str:
    """What the model writes for `calls`: the template's rendering of them after the user's turn, from where the
    generation prompt leaves off to the end of the turn (an end-of-turn token, or Gemma 4's opened response)."""
    ask = [{"role": "user", "content": "Weather in New York for 3 days, and the time?"}]
    reply = {"role": "assistant", "content": content, "tool_calls": [_openai(c, n) for n, c in enumerate(calls)]}
    messages, tools = tool_messages([*ask, reply], TOOLS, tokenizer)
    full = render_chat(tokenizer, messages, tokenize=False, **({"tools": tools} if tools else {}))
    prompt = generation_prompt(tokenizer, messages[:-1], **({"tools": tools} if tools else {}))
    start = len(os.path.commonprefix([prompt, full]))
    while start and not full[:start].endswith(("\n", ">", "]")):  # back to where the prompt's framing ends
        start -= 1
    ends = [full.find(t, start) for t in [*FAMILIES[family][4], "<|tool_response>"]]
    return full[start:min((e for e in ends if e >= 0), default=len(full))]


def _bodies(calls: list[dict]) -> list[dict]:
    return [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])} for c in calls]


def test_every_family_with_tools_is_covered():
    assert set(TOOL_FAMILIES) == {"llama", "qwen2", "qwen3", "qwen3_5", "mistral", "gemma4", "ministral3",
                                  "phi4mini"}


@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_a_call_as_the_family_writes_it_is_read_back(family):
    tokenizer = _tokenizer(family)
    text = written(tokenizer, family, [WEATHER])
    content, calls = parse_tool_calls(text, OFFERED)
    assert _bodies(calls) == [WEATHER], text
    assert content is None, text


@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_the_call_survives_the_detokenizer(family):
    """Ministral's [TOOL_CALLS] and [ARGS] and Gemma 4's <|tool_call> and <|"|> are special tokens: decoding drops
    special tokens, so the detokenizer must keep these, or the call is lost in the text."""
    tokenizer = _tokenizer(family)
    text = written(tokenizer, family, [WEATHER])
    detokenizer = Detokenizer(tokenizer)
    streamed = "".join(detokenizer.add(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"])
    assert _bodies(parse_tool_calls(streamed, OFFERED)[1]) == [WEATHER], streamed


@pytest.mark.parametrize("family", [f for f in TOOL_FAMILIES if f not in SINGLE_CALL])
def test_parallel_calls_are_all_read(family):
    tokenizer = _tokenizer(family)
    text = written(tokenizer, family, [WEATHER, TIME])
    assert _bodies(parse_tool_calls(text, OFFERED)[1]) == [WEATHER, TIME], text
    assert _bodies(parse_tool_calls(text, OFFERED, parallel=False)[1]) == [WEATHER]


@pytest.mark.parametrize("family", [f for f in TOOL_FAMILIES if f != "llama"])  # Llama's call is the whole reply
def test_streamed_text_before_a_call_is_sent_and_the_call_held(family):
    """Qwen 3.5's instructions allow reasoning in words before a call: those words stream as content, the call is
    held back and parsed at the end, whichever opener the family writes."""
    tokenizer = _tokenizer(family)
    call = written(tokenizer, family, [WEATHER]).lstrip()
    splitter = ToolCallSplitter(OFFERED)
    text = "I will look it up. " + call
    sent = "".join(splitter.feed(text[i:i + 3]) for i in range(0, len(text), 3))
    rest, calls = splitter.finish()
    assert sent + rest == "I will look it up. "
    assert _bodies(calls) == [WEATHER], call


def test_a_reply_that_is_not_a_call_stays_content():
    for text in ("[TOOL_CALLS]unknown_tool[ARGS]{}", "<|tool_call>call:get_weather{city:<|\"|>Paris}<tool_call|>",
                 "functools[not json]", "<tool_call>\n<function=delete_all>\n</function>\n</tool_call>",
                 "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"):  # cut short
        assert parse_tool_calls(text, OFFERED) == (text, []), text


def test_gemma_4_arguments_with_spaces_and_nesting_are_read():
    text = ('<|tool_call>call:get_weather{ city: <|"|>New York<|"|> , days: 3, '
            'extra: {flags: [true, <|"|>a, b<|"|>], ratio: 0.5} }<tool_call|>')
    offered = {"get_weather": {}}
    (call,) = parse_tool_calls(text, offered)[1]
    assert json.loads(call["function"]["arguments"]) == {
        "city": "New York", "days": 3, "extra": {"flags": [True, "a, b"], "ratio": 0.5}}
