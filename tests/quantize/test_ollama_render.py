"""An Ollama model made from our Modelfile is prompted as serving and fine-tuning prompt it: the Modelfile's Go
template, rendered by Go's text/template as Ollama's server calls it, writes what the family's published Jinja
template writes (through finetune.tool_calls for tools), for plain chats, tools, calls, results and thinking.

pytest tests/quantize/test_ollama_render.py
"""

from __future__ import annotations

import pytest

from quantize.ollama import go_template, modelfile
from tests.families import NAMES, TEMPLATES, family_tokenizer
from tests.quantize.ollama_render import ollama_prompt, same_json, served_prompt

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city today",
                                      "parameters": {"type": "object", "required": ["city"], "properties": {
                                          "city": {"type": "string", "description": "The city's name"},
                                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}},
    {"type": "function", "function": {"name": "get_time", "description": "The local time in a city",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"}}}}},
]


def call(call_id: str, name: str, **arguments) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


PLAIN = [{"role": "system", "content": "You answer in one short sentence."},
         {"role": "user", "content": "What is 2 and 2?"}, {"role": "assistant", "content": "It is 4."},
         {"role": "user", "content": "And twice that?"}]
NO_SYSTEM = PLAIN[1:]
ONE_CALL = [{"role": "system", "content": "You are a weather desk."},
            {"role": "user", "content": "How warm is Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [call("a1b2c3d4e", "get_weather", city="Paris")]},
            {"role": "tool", "tool_call_id": "a1b2c3d4e", "content": '{"temperature": 21}'}]
TEXT_AND_CALL = [{"role": "user", "content": "Lyon's time, please."},
                 {"role": "assistant", "content": "Let me look.",
                  "tool_calls": [call("f9e8d7c6b", "get_time", city="Lyon")]},
                 {"role": "tool", "tool_call_id": "f9e8d7c6b", "content": "14:05"},
                 {"role": "assistant", "content": "It is 14:05 in Lyon."},
                 {"role": "user", "content": "And the weather in Nice, in celsius?"}]
PARALLEL = [{"role": "user", "content": "Weather in Oslo and Rome?"},
            {"role": "assistant", "content": "", "tool_calls": [call("o1o2o3o4o", "get_weather", city="Oslo"),
                                                                call("r1r2r3r4r", "get_weather", city="Rome")]},
            {"role": "tool", "tool_call_id": "o1o2o3o4o", "content": "cold"},
            {"role": "tool", "tool_call_id": "r1r2r3r4r", "content": "warm"}]

# the conversations each template renders (Llama 3.2's takes one call a turn; Gemma's templates want user and
# assistant turns in turn, which two results in a row, as user turns, break)
CASES = {"plain": (PLAIN, None), "no system": (NO_SYSTEM, None), "plain with tools": (NO_SYSTEM, TOOLS),
         "one call": (ONE_CALL, TOOLS), "text and call": (TEXT_AND_CALL, TOOLS), "parallel": (PARALLEL, TOOLS)}
REFUSED = {("llama", "parallel"), ("gemma2", "parallel"), ("gemma3_text", "parallel")}
TEMPLATE_FAMILIES = [*NAMES, "smollm2"]
PAIRS = [(family, case) for family in TEMPLATE_FAMILIES for case in CASES if (family, case) not in REFUSED]


def tokenizer_for(name: str):
    if name != "smollm2":
        return family_tokenizer(name)
    from tests.conftest import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = (TEMPLATES / "smollm2.jinja").read_text(encoding="utf-8")
    return tokenizer


@pytest.mark.parametrize(("family", "case"), PAIRS)
def test_ollama_prompts_as_serving_does(family, case):
    tokenizer = tokenizer_for(family)
    messages, tools = CASES[case]
    template = go_template(tokenizer)
    assert template is not None
    want = served_prompt(tokenizer, messages, tools)
    got = ollama_prompt(template, messages, tools)
    assert same_json(got) == same_json(want)


THOUGHT = [{"role": "user", "content": "How warm is Paris?"},
           {"role": "assistant", "content": "", "reasoning_content": "The user wants Paris's weather.",
            "tool_calls": [call("a1b2c3d4e", "get_weather", city="Paris")]},
           {"role": "tool", "tool_call_id": "a1b2c3d4e", "content": "21 C"}]
EARLIER_THOUGHT = [{"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello!", "reasoning_content": "A greeting."},
                   {"role": "user", "content": "How warm is Paris?"}]


@pytest.mark.parametrize("think", [None, False, True])
@pytest.mark.parametrize("messages", [THOUGHT, EARLIER_THOUGHT], ids=["after the last query", "before it"])
def test_qwen3_s_reasoning_and_thinking_switch_as_serving_has_them(messages, think):
    """Reasoning is kept after the last user turn only; `think: false` closes an empty think block, as
    enable_thinking=False does; unset, the template's default (Qwen 3 thinks)."""
    tokenizer = family_tokenizer("qwen3")
    template = go_template(tokenizer)
    want = served_prompt(tokenizer, messages, TOOLS, thinking=think)
    assert same_json(ollama_prompt(template, messages, TOOLS, think=think)) == same_json(want)
    assert ("The user wants" in want) == (messages is THOUGHT) and "A greeting" not in want
    assert want.endswith("<think>\n\n</think>\n\n") == (think is False)


def ollama_reads(template: str) -> dict:
    import json
    import subprocess

    from tests.quantize.ollama_render import renderer

    done = subprocess.run([str(renderer())], input=json.dumps({"template": template, "inspect": True}),
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


# family -> (what Ollama takes a call to start with, the thinking tags it splits off)
OLLAMA_READS = {"smollm2": ("<tool_call>", ["", ""]), "qwen2": ("<tool_call>", ["", ""]),
                "qwen3": ("<tool_call>", ["<think>", "</think>"]), "llama": ("{", ["", ""]),
                "mistral": ("[TOOL_CALLS] [", ["", ""]), "gemma2": ("<tool_call>", ["", ""]),
                "gemma3_text": ("<tool_call>", ["", ""]), "phi3": ("<tool_call>", ["", ""]),
                "phi4mini": ("functools[", ["", ""])}


@pytest.mark.parametrize("family", TEMPLATE_FAMILIES)
def test_ollama_offers_tools_and_finds_each_family_s_calls(family):
    """What Ollama reads from the template: it offers tools (`.Tools` is used), a call starts with the family's
    own tag (a bare JSON object for Llama), and Qwen 3's <think> block is thinking."""
    tokenizer = tokenizer_for(family)
    text = modelfile("m.gguf", tokenizer)
    template = go_template(tokenizer)
    assert f'TEMPLATE """{template}"""' in text and "SYSTEM" not in text
    read = ollama_reads(template)
    assert "tools" in read["vars"] and "toolcalls" in read["vars"]
    assert (read["tool_tag"], read["thinking"]) == OLLAMA_READS[family]


TRICKY = ['Say "hi" to {name}', "a < b && c > d", "Ünïcødé ✓ 日本語", "line one\nline two", "path C:\\temp\\x",
          "{not json", '["a", 1]', "50% off; #1 & only", "</tool_call> is text here", "tab\there"]


def random_conversation(rng, family: str) -> tuple[list[dict], list[dict] | None]:
    """A conversation the family's template takes: an optional system prompt, then user turns each answered by
    text or by calls (one for Llama 3.2) whose results follow (one a turn for Gemma, whose template wants turns in
    turn), ending on a user turn or on results; its texts drawn from TRICKY."""
    text = lambda: rng.choice(TRICKY) + f" {rng.randrange(100)}"  # noqa: E731
    tools = TOOLS if rng.random() < 0.7 else None
    messages = [{"role": "system", "content": text()}] if rng.random() < 0.5 else []
    for turn in range(rng.randrange(1, 4)):
        messages.append({"role": "user", "content": text()})
        last = turn == 2 or rng.random() < 0.3
        if tools and rng.random() < 0.5:
            n = 1 if family in ("llama", "gemma2", "gemma3_text") else rng.randrange(1, 3)
            calls = [call(f"{turn}{i}abcdefg", rng.choice(["get_weather", "get_time"]), city=text()) for i in range(n)]
            messages.append({"role": "assistant", "content": text() if rng.random() < 0.3 else "", "tool_calls": calls})
            messages += [{"role": "tool", "tool_call_id": c["id"], "content": text()} for c in calls]
            if last:
                return messages, tools
            messages.append({"role": "assistant", "content": text()})
        elif not last:
            messages.append({"role": "assistant", "content": text()})
        if last:
            break
    return messages, tools


@pytest.mark.parametrize("family", TEMPLATE_FAMILIES)
def test_ollama_prompts_as_serving_does_for_random_conversations(family):
    """40 seeded random conversations per template, with quotes, braces, markup, backslashes and non-Latin text."""
    import random

    rng = random.Random(f"ollama-{family}")
    tokenizer = tokenizer_for(family)
    template = go_template(tokenizer)
    for n in range(40):
        messages, tools = random_conversation(rng, family)
        want = served_prompt(tokenizer, messages, tools)
        got = ollama_prompt(template, messages, tools)
        assert same_json(got) == same_json(want), (n, messages, tools)
