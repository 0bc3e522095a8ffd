"""Format detection and conversion of one record (finetune/data/formats.py)."""

import pytest

from finetune.data.formats import detect_format, to_conversation
from finetune.data.records import Conversation, Reject


def convert(record):
    return to_conversation(record, "f.jsonl:1")


def test_messages_keep_roles_and_metadata():
    conv = convert({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                 {"role": "assistant", "content": "a"}],
                    "metadata": {"augmented": True, "token_reduction": 50}, "id": 7})
    assert isinstance(conv, Conversation)
    assert conv.format == "messages"
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant"]
    # top-level extras are kept next to the metadata object, nothing is lost
    assert conv.metadata == {"augmented": True, "token_reduction": 50, "id": 7}


def test_openai_content_parts_are_joined():
    conv = convert({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                              {"type": "text", "text": "b"}]},
                                 {"role": "assistant", "content": "c"}]})
    assert conv.messages[0]["content"] == "ab"


def test_sharegpt_roles_are_mapped_and_system_prepended():
    conv = convert({"system": "Be kind.", "conversations": [{"from": "human", "value": "hi"},
                                                            {"from": "gpt", "value": "hello"}]})
    assert conv.format == "sharegpt"
    assert conv.messages == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "hello"}]


def test_alpaca_input_joins_instruction():
    conv = convert({"instruction": "Translate.", "input": "Good morning", "output": "Bonjour"})
    assert conv.format == "alpaca"
    assert conv.messages == [{"role": "user", "content": "Translate.\n\nGood morning"},
                             {"role": "assistant", "content": "Bonjour"}]
    assert convert({"instruction": "Say hi.", "input": "", "output": "hi"}).messages[0]["content"] == "Say hi."


def test_prompt_response():
    conv = convert({"prompt": "p", "response": "r", "source": "web"})
    assert conv.format == "prompt_response"
    assert conv.messages[1] == {"role": "assistant", "content": "r"}
    assert conv.metadata == {"source": "web"}


@pytest.mark.parametrize("record, fmt", [
    ({"messages": [], "conversations": []}, "messages"),  # first match wins, in a fixed order
    ({"conversations": []}, "sharegpt"),
    ({"instruction": "", "output": ""}, "alpaca"),
    ({"prompt": "", "response": ""}, "prompt_response"),
    ({"instruction": ""}, None),
    ({"text": ""}, None),
])
def test_detect_format(record, fmt):
    assert detect_format(record) == fmt


@pytest.mark.parametrize("record, code, words", [
    ({"messages": [{"role": "user", "content": 42}]}, "wrong_type", "messages[0].content must be a string"),
    ({"messages": [{"content": "x"}]}, "missing_field", "messages[0] needs both role and content"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "bad_role", "'wizard'"),
    ({"messages": "hello"}, "wrong_type", "non-empty list"),
    ({"messages": []}, "wrong_type", "non-empty list"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, "bad_role", "'alien'"),
    ({"conversations": [{"from": "human"}]}, "missing_field", "from and value"),
    ({"instruction": "x", "output": None}, "wrong_type", "output must be a string"),
    ({"prompt": "x", "response": ["a"]}, "wrong_type", "response must be a string"),
    ({"messages": [{"role": "user", "content": "x"}], "metadata": [1]}, "wrong_type", "metadata must be an object"),
    ({"prompt": "broken \ud83d escape", "response": "r"}, "invalid_unicode", "prompt holds a lone surrogate"),
    ({"text": "plain"}, "unknown_format", "no known format"),
    ([1, 2], "not_an_object", "JSON object"),
    ("a string", "not_an_object", "JSON object"),
])
def test_malformed_records_are_rejected_with_a_reason(record, code, words):
    r = convert(record)
    assert isinstance(r, Reject)
    assert (r.stage, r.code) == ("ingest", code)
    assert words in r.detail
    assert r.origin == "f.jsonl:1"
    assert r.record == record
