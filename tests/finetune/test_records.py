"""Bad training data gets an error naming the file, the line or record, and the fix.

pytest tests/finetune/test_records.py
"""

import json

import pytest

from finetune.records import DataError, check_records, read_records


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Data file not found.*train_file"):
        read_records(tmp_path / "nope.jsonl")


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n{"a": 3}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:3: malformed JSON line"):
        read_records(path)


def test_malformed_json_array_names_the_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}\n]')
    with pytest.raises(DataError, match=r"d\.json:3: malformed JSON"):
        read_records(path)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": "ok"}\n{"a": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid UTF-8"):
        read_records(path)


def test_bom_and_crlf_are_fine(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}\r\n')
    assert [r.data["a"] for r in read_records(path)] == [1, 2]


def test_csv_records_know_their_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,output\nsay hi,hi\nsay bye,bye\n")
    records = read_records(path)
    assert records[1].data == {"instruction": "say bye", "output": "bye"} and records[1].where.endswith(":3")


def test_missing_columns_name_found_and_expected_and_suggest_the_task(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(DataError) as e:
        check_records(read_records(path), "completion", str(path))
    text = str(e.value)
    assert "d.jsonl:1: missing instruction, output; found columns: messages" in text
    assert "task='chat'" in text


def test_empty_dataset(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="holds no examples"):
        check_records(read_records(path), "completion", str(path))


def test_chat_records_need_roles_and_an_assistant_turn(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hi"}]},
            {"messages": [{"role": "robot", "content": "hi"}]},
            {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x",
                                                               "reasoning_content": ["a", "list"]}]},
            {"messages": [{"role": "user", "content": "hi", "reasoning_content": "mine"},
                          {"role": "assistant", "content": "x"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x",
                                                               "reasoning_content": "a trace"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as e:
        check_records(read_records(path), "chat", str(path))
    text = str(e.value)
    assert "d.jsonl:1: no assistant message" in text
    assert "d.jsonl:2: messages[0] needs role" in text
    assert "d.jsonl:3: messages[0].content must be a string" in text
    assert "d.jsonl:4: messages[1].reasoning_content (a thinking model's reasoning) must be a string" in text
    assert "d.jsonl:5: messages[0].reasoning_content" in text
    assert "d.jsonl:6" not in text  # a trace on an assistant message is data


def test_extraction_target_that_is_not_json_is_rejected_with_its_line(tmp_path):
    path = tmp_path / "d.jsonl"
    good = {"messages": [{"role": "user", "content": "I like tea"},
                         {"role": "assistant", "content": '{"sentiment": "POSITIVE"}'}]}
    bad = {"messages": [{"role": "user", "content": "I like tea"},
                        {"role": "assistant", "content": '{"sentiment": POSITIVE}'}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:2: the assistant reply is not valid JSON"):
        check_records(read_records(path), "extraction", str(path))
