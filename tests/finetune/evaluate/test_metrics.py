"""Metric functions on hand-made outputs: pytest tests/finetune/evaluate/test_metrics.py"""

from __future__ import annotations

import json

import pytest

from finetune.evaluate.metrics import extraction_metrics, parse_lenient, parse_strict, text_metrics, token_reduction
from finetune.extraction import load_schema, to_json

GOLD = to_json({"attributes": [{"type": "INTEREST", "value": "hiking"}, {"type": "DISLIKE", "value": "olives"}],
                "aspects": [{"aspect": "food", "sentiment": "POSITIVE"}, {"aspect": "wifi", "sentiment": "NEGATIVE"}],
                "sentiment": "MIXED"})


def test_perfect_extraction_scores_100():
    m = extraction_metrics([GOLD], [GOLD], load_schema())
    assert m["json_validity"] == m["schema_validity"] == 100
    assert m["attribute_f1"] == m["aspect_sentiment_accuracy"] == m["extraction_exact_match"] == 100
    assert m["aspect_confusion"]["POSITIVE"]["POSITIVE"] == 1


def test_partial_extraction_counts_fields():
    pred = json.dumps({"attributes": [{"type": "INTEREST", "value": "Hiking"}, {"type": "INTEREST", "value": "olives"}],
                       "aspects": [{"aspect": "the food", "sentiment": "NEGATIVE"}], "sentiment": "MIXED"})
    m = extraction_metrics([pred], [GOLD], load_schema())
    # One of two predicted attributes is right (case and article are normalized), one of two gold ones found.
    assert m["attribute_precision"] == 50 and m["attribute_recall"] == 50 and m["attribute_f1"] == 50
    assert m["aspect_sentiment_accuracy"] == 0
    assert m["aspect_confusion"]["POSITIVE"]["NEGATIVE"] == 1
    assert m["aspect_confusion"]["NEGATIVE"]["MISSING"] == 1
    assert m["overall_sentiment_accuracy"] == 100
    assert m["extraction_exact_match"] == 0


def test_invalid_and_fenced_json():
    fenced = "Sure! ```json\n" + GOLD + "\n```"
    m = extraction_metrics([fenced, "not json at all"], [GOLD, GOLD], load_schema())
    assert m["json_validity"] == 0  # the whole reply must be JSON
    assert m["attribute_recall"] == 50  # but the fenced one's fields still count
    assert parse_strict(fenced) is None and parse_lenient(fenced)["sentiment"] == "MIXED"


def test_schema_validity_separate_from_json_validity():
    wrong = json.dumps({"attributes": [{"type": "HOBBY", "value": "x"}], "aspects": [], "sentiment": "MIXED"})
    m = extraction_metrics([wrong], [GOLD], load_schema())
    assert m["json_validity"] == 100 and m["schema_validity"] == 0


def test_text_metrics_and_token_reduction():
    m = text_metrics(["the cat sat on the mat", "hello"], ["the cat sat on the mat", "hello world"],
                     count_tokens=lambda s: len(s.split()))
    assert m["exact_match"] == 50
    assert m["rouge1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert 0 < m["bleu"] < 100 and 0 < m["chrf"] < 100
    assert m["reference_tokens"] == 8 and m["generated_tokens"] == 7
    assert m["token_reduction_pct"] == pytest.approx(12.5)
    assert token_reduction(["a b c d"], ["a b"], lambda s: len(s.split()))["token_reduction_pct"] == -100


def test_empty_predictions_rejected():
    with pytest.raises(ValueError, match="empty"):
        text_metrics([], [])


def test_tool_call_metrics_read_each_family_s_format():
    from finetune.evaluate.data import Example
    from finetune.evaluate.metrics import tool_call_metrics

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]
    call = [{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}]

    def example(calls):
        return Example({}, [], None, "", "x", tools, calls)

    replies = [
        '<|tool_call>call:get_weather{city:<|"|>Oslo<|"|>,days:2}<tool_call|>',  # Gemma 4: exact
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n<parameter=days>\n3\n"
        "</parameter>\n</function>\n</tool_call>",  # Qwen 3.5: the right tool, a wrong argument
        "It is cold in Oslo.",  # no call where one is expected
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}',  # Ministral 3: a call where none is expected
        "Hello!",  # words where words are expected
    ]
    metrics = tool_call_metrics(replies, [example(call)] * 3 + [example(None)] * 2)
    assert metrics["tool_call_examples"] == 3
    assert metrics["tool_call_rate"] == pytest.approx(200 / 3)
    assert metrics["tool_name_accuracy"] == pytest.approx(200 / 3)
    assert metrics["tool_call_exact"] == pytest.approx(100 / 3)
    assert metrics["false_call_rate"] == 50
