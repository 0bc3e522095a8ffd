"""Loss masking and system messages under every family's published chat template.

pytest tests/finetune/test_chat_template.py
"""

from __future__ import annotations

import logging

import pytest

from finetune.chat_template import CHATML_TEMPLATE, render_chat, thinking_switch
from finetune.formatting import IGNORE_INDEX, FormatOptions, tokenize_record
from finetune.records import DataError
from tests.conftest import build_tiny_tokenizer
from tests.families import CONVERSATION, TEMPLATE_NAMES, family_tokenizer

# What each family's model must learn to write after its generation prompt: the reply and its end-of-turn token.
END_OF_TURN = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "mistral": "</s>",
               "gemma2": "<end_of_turn>", "gemma3_text": "<end_of_turn>", "phi3": "<|end|>",
               "phi4mini": "<|end|>", "qwen3_5": "<|im_end|>", "gemma4": "<turn|>", "ministral3": "</s>"}


def _learned_runs(tokenizer, example) -> list[str]:
    runs, run = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != IGNORE_INDEX:
            run.append(token)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    return runs + ([tokenizer.decode(run)] if run else [])


@pytest.mark.parametrize("family", TEMPLATE_NAMES)
def test_every_reply_and_its_end_of_turn_are_learned_and_nothing_else(family):
    tokenizer = family_tokenizer(family)
    example = tokenize_record(tokenizer, {"messages": CONVERSATION}, FormatOptions("chat", 1024))
    runs = [run.strip() for run in _learned_runs(tokenizer, example)]
    end = END_OF_TURN[family]
    assert runs == [f"It is 4.{end}", f"That makes 8.{end}"], runs
    # the text trained on is what the template renders, and the system message is in it
    text = tokenizer.decode(example["input_ids"])
    assert "You answer in one short sentence." in text


@pytest.mark.parametrize("family", TEMPLATE_NAMES)
def test_what_is_learned_is_what_the_model_writes_after_the_generation_prompt(family):
    """The labelled tokens of the last reply equal the tokens that follow the rendered generation prompt, so
    training teaches exactly the continuation that serving asks for."""
    tokenizer = family_tokenizer(family)
    conversation = CONVERSATION[1:]  # Mistral's template places a system message by what comes last
    example = tokenize_record(tokenizer, {"messages": conversation}, FormatOptions("chat", 1024))
    # A reply without reasoning is what a thinking model writes with thinking off: Qwen 3's and 3.5's prompts then
    # close an empty <think> block, Gemma 4's an empty thought channel.
    switch = {"enable_thinking": False} if thinking_switch(tokenizer) else {}
    prompt = render_chat(tokenizer, conversation[:-1], tokenize=False, add_generation_prompt=True, **switch)
    full = tokenizer.decode(example["input_ids"])
    last = _learned_runs(tokenizer, example)[-1]
    assert full.startswith(prompt)
    assert full[len(prompt):].startswith(last) and last.strip().startswith("That makes 8.")


def test_a_template_that_refuses_a_system_message_gets_it_in_the_first_user_turn_with_a_warning(caplog):
    tokenizer = family_tokenizer("gemma2")
    with caplog.at_level(logging.WARNING, logger="finetune.chat_template"):
        text = render_chat(tokenizer, CONVERSATION, tokenize=False)
    assert text.startswith("<bos><start_of_turn>user\nYou answer in one short sentence.\n\nWhat is 2 and 2?")
    assert "no place for a system message" in caplog.text


def test_a_conversation_the_template_rejects_names_the_template_s_reason():
    tokenizer = family_tokenizer("gemma2")
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
             {"role": "assistant", "content": "c"}]
    with pytest.raises(DataError, match="rejects this conversation: Conversation roles must alternate"):
        tokenize_record(tokenizer, {"messages": twice}, FormatOptions("chat", 256))


def test_generation_markers_use_transformers_assistant_mask():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = CHATML_TEMPLATE.replace(
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
        "{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{'\n'}}"
        "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}{% endif %}")
    example = tokenize_record(tokenizer, {"messages": CONVERSATION}, FormatOptions("chat", 1024))
    assert [r.strip() for r in _learned_runs(tokenizer, example)] == ["It is 4.<|im_end|>", "That makes 8.<|im_end|>"]


def test_chatml_prefix_masking_still_holds_on_the_tiny_tokenizer():
    tokenizer = build_tiny_tokenizer()
    example = tokenize_record(tokenizer, {"messages": CONVERSATION}, FormatOptions("chat", 1024))
    assert _learned_runs(tokenizer, example) == ["It is 4.<|im_end|>", "That makes 8.<|im_end|>"]


REASONED = [{"role": "user", "content": "What is 2 and 2?"},
            {"role": "assistant", "content": "It is 4.", "reasoning_content": "Two plus two makes 4, so it is 4."}]


@pytest.mark.parametrize(("family", "learned"), [
    # Qwen 3's generation prompt with thinking on ends at the assistant marker: the model learns to open the block
    ("qwen3", "<think>\nTwo plus two makes 4, so it is 4.\n</think>\n\nIt is 4.<|im_end|>"),
    # Qwen 3.5's opens it: the model learns the reasoning and to close it
    ("qwen3_5", "Two plus two makes 4, so it is 4.\n</think>\n\nIt is 4.<|im_end|>"),
])
def test_a_reply_with_reasoning_is_learned_whole_after_the_thinking_prompt(family, learned):
    """Distillation data (a thinking model's trace in reasoning_content) teaches the reasoning, not only the answer
    read after it; the reasoning's own "It is 4" does not take the answer's place in the masking."""
    tokenizer = family_tokenizer(family)
    example = tokenize_record(tokenizer, {"messages": REASONED}, FormatOptions("chat", 1024))
    assert [run.strip() for run in _learned_runs(tokenizer, example)] == [learned]
    prompt = render_chat(tokenizer, REASONED[:1], tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert tokenizer.decode(example["input_ids"]).startswith(prompt)


def test_a_template_that_drops_the_reasoning_says_so_and_learns_the_answer(caplog):
    tokenizer = family_tokenizer("gemma4")
    with caplog.at_level(logging.WARNING, logger="finetune.chat_template"):
        example = tokenize_record(tokenizer, {"messages": REASONED}, FormatOptions("chat", 1024))
    assert [run.strip() for run in _learned_runs(tokenizer, example)] == ["It is 4.<turn|>"]
    assert "leaves the last reply's reasoning_content out" in caplog.text
