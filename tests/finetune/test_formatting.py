"""Prompt templates and loss masks per task.

pytest tests/finetune/test_formatting.py
"""

import pytest

from finetune.formatting import IGNORE_INDEX, FormatOptions, completion_prompt, tokenize_record
from tests.conftest import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _label_text(tok, example):
    return tok.decode([t for t in example["labels"] if t != IGNORE_INDEX])


def test_completion_learns_only_the_response_unless_train_on_inputs(tok):
    record = {"instruction": "Add", "input": "1 and 2", "output": "3"}
    masked = tokenize_record(tok, record, FormatOptions("completion", 512))
    assert _label_text(tok, masked) == "3<|im_end|>"
    prompt = completion_prompt("Add", "1 and 2")
    assert tok.decode(masked["input_ids"]) == prompt + "3<|im_end|>"
    assert "### Input:\n1 and 2" in prompt
    full = tokenize_record(tok, record, FormatOptions("completion", 512, train_on_inputs=True))
    assert full["labels"] == full["input_ids"]


def test_chat_learns_every_assistant_turn_and_nothing_else(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
                {"role": "assistant", "content": "see you"}]
    ex = tokenize_record(tok, {"messages": messages}, FormatOptions("chat", 512))
    learned = [tok.decode([t]) for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
    text = "".join(learned)
    assert "hello" in text and "see you" in text
    assert "hi" not in text.replace("hello", "") and "bye" not in text and "Be brief" not in text
    assert text.count("<|im_end|>") == 2  # the model learns to end its turns


def test_truncation_that_removes_every_target_drops_the_example(tok):
    record = {"instruction": "word " * 200, "input": "", "output": "answer"}
    assert tokenize_record(tok, record, FormatOptions("completion", 32)) is None


def test_summarization_truncates_the_article_not_the_prompt(tok):
    record = {"article": "sunny weather " * 300, "highlights": "sunny"}
    ex = tokenize_record(tok, record, FormatOptions("summarization", 512, max_source_length=20, max_target_length=8))
    text = tok.decode(ex["input_ids"])
    assert text.startswith("Summarize the following article.") and "### Summary:\nsunny" in text
    assert len(ex["input_ids"]) < 60


def test_summarization_accepts_configured_columns(tok):
    record = {"doc": "a long text", "tldr": "short"}
    opts = FormatOptions("summarization", 512, max_source_length=50, max_target_length=8, prompt_column="doc",
                         response_column="tldr")
    assert _label_text(tok, tokenize_record(tok, record, opts)) == "short<|im_end|>"


def test_code_generation_reads_prompt_completion_pairs(tok):
    ex = tokenize_record(tok, {"prompt": "def add(a, b):\n", "completion": "    return a + b\n"},
                         FormatOptions("code-generation", 512))
    assert _label_text(tok, ex) == "    return a + b\n<|im_end|>"
