"""Rendering examples in each export format, whole or per assistant turn (finetune/data/export.py)."""

import json

from finetune.data.export import SplitWriter, chatml, examples, render

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


def test_conversation_mode_yields_the_whole_conversation():
    assert list(examples(CONV, "conversation")) == [(2, CONV)]


def test_per_turn_yields_one_prefix_per_assistant_turn():
    got = list(examples(CONV, "per_turn"))
    assert [turn for turn, _ in got] == [1, 2]
    assert got[0][1] == CONV[:3] and got[1][1] == CONV


def test_messages_format_is_what_the_chat_task_reads():
    assert render(CONV, {"a": 1}, "messages") == {"messages": CONV, "metadata": {"a": 1}}
    assert render(CONV, None, "messages") == {"messages": CONV}


def test_chatml_text():
    assert render(CONV[1:3], None, "chatml") == {
        "text": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"}
    assert chatml(CONV).count("<|im_start|>") == 5


def test_alpaca_and_instruction_put_earlier_turns_in_the_input():
    history = "System: Be brief.\nUser: Hi\nAssistant: Hello"
    assert render(CONV, None, "alpaca") == {"instruction": "2+2?", "input": history, "output": "4"}
    assert render(CONV, None, "instruction") == {"instruction": "2+2?", "context": history, "response": "4"}
    assert render(CONV[1:3], None, "alpaca") == {"instruction": "Hi", "input": "", "output": "Hello"}


def test_alpaca_writer_streams_a_valid_json_array(tmp_path):
    w = SplitWriter(tmp_path / "train.json", "alpaca")
    for i in range(3):
        w.write({"instruction": f"q{i}", "input": "", "output": "é"})
    w.close()
    assert [e["instruction"] for e in json.loads((tmp_path / "train.json").read_text(encoding="utf-8"))] == \
        ["q0", "q1", "q2"]
    empty = SplitWriter(tmp_path / "empty.json", "alpaca")
    empty.close()
    assert json.loads((tmp_path / "empty.json").read_text()) == []


def test_jsonl_writer_writes_one_object_per_line_unescaped(tmp_path):
    w = SplitWriter(tmp_path / "train.jsonl", "messages")
    w.write({"messages": [{"role": "user", "content": "emoji 🌙"}]})
    w.close()
    assert (tmp_path / "train.jsonl").read_text(encoding="utf-8") == \
        '{"messages": [{"role": "user", "content": "emoji 🌙"}]}\n'
