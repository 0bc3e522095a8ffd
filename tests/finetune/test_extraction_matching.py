"""The lenient matching rule of extraction scoring (finetune.extraction.matching), the per-type and per-sentiment
scores built on it, and the label checks of the natural set (finetune.extraction.natural)."""

from __future__ import annotations

import json

import pytest

from finetune.evaluate.metrics import extraction_metrics
from finetune.extraction.matching import grounded, phrases_match
from finetune.extraction.natural import check_record, user_lines


@pytest.mark.parametrize("a, b, expected", [
    ("cycling to work", "cycle to work", True),      # same stems
    ("the wifi", "Wifi", True),                       # case and function words
    ("hiking", "hiking in the alps", True),           # 1 of 2 content words: half
    ("late night gaming", "gaming", False),           # 1 of 3
    ("car", "cat", False),                            # a shared prefix is not a stem
    ("customer service", "service", True),
    ("dont like olives", "don't like olives", True),  # apostrophes
    ("", "anything", False),
])
def test_phrases_match(a, b, expected):
    assert phrases_match(a, b) is expected
    assert phrases_match(b, a) is expected  # symmetric


@pytest.mark.parametrize("phrase, text, expected", [
    ("cycle to work", "i usually cycle to work lol", True),   # a span
    ("running", "I run every morning", True),                # a close paraphrase
    ("window seat", "always the seat by the window", True),
    ("sushi", "the ramen was great", False),
])
def test_grounded(phrase, text, expected):
    assert grounded(phrase, text) is expected


def _reply(attributes=(), aspects=(), sentiment="NEUTRAL") -> str:
    return json.dumps({"attributes": [{"type": t, "value": v} for t, v in attributes],
                       "aspects": [{"aspect": a, "sentiment": s} for a, s in aspects], "sentiment": sentiment})


def test_lenient_matching_credits_paraphrased_values_and_per_type_and_sentiment_scores():
    gold = [_reply([("BEHAVIOR", "cycle to work"), ("INTEREST", "bouldering")],
                   [("battery", "POSITIVE"), ("customer service", "NEGATIVE")], "MIXED"),
            _reply([("DISLIKE", "cilantro")], [], "NEGATIVE")]
    pred = [_reply([("BEHAVIOR", "cycling to work"), ("PREFERENCE", "bouldering")],
                   [("the battery", "POSITIVE"), ("service", "POSITIVE")], "MIXED"),
            _reply([("DISLIKE", "cilantro")], [], "NEUTRAL")]
    exact = extraction_metrics(pred, gold, matching="exact")
    lenient = extraction_metrics(pred, gold, matching="lenient")
    # exact: only cilantro matches (bouldering has the wrong type); "the battery" normalizes to "battery"
    assert exact["attribute_precision"] == exact["attribute_recall"] == pytest.approx(100 / 3)
    # lenient adds "cycling to work"; bouldering stays wrong (type), service is found but with the wrong sentiment
    assert lenient["attribute_precision"] == lenient["attribute_recall"] == pytest.approx(200 / 3)
    assert lenient["attribute_prf_by_type"]["BEHAVIOR"] == {"precision": 100.0, "recall": 100.0, "f1": 100.0}
    assert lenient["attribute_prf_by_type"]["INTEREST"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert lenient["attribute_prf_by_type"]["PREFERENCE"] == {"precision": 0.0, "recall": 100.0, "f1": 0.0}
    assert lenient["aspect_precision"] == 50.0 and lenient["aspect_recall"] == 50.0
    assert lenient["aspect_confusion"]["NEGATIVE"]["POSITIVE"] == 1  # found, judged the wrong way
    assert exact["aspect_confusion"]["NEGATIVE"]["MISSING"] == 1     # not found at all
    by_sentiment = lenient["aspect_prf_by_sentiment"]
    assert by_sentiment["POSITIVE"] == {"precision": 50.0, "recall": 100.0, "f1": pytest.approx(66.67)}
    assert by_sentiment["NEGATIVE"]["recall"] == 0.0
    assert lenient["overall_sentiment_accuracy"] == 50.0
    assert lenient["overall_prf_by_sentiment"]["NEGATIVE"]["recall"] == 0.0
    assert lenient["overall_confusion"]["NEGATIVE"]["NEUTRAL"] == 1


def test_a_prediction_is_paired_with_one_gold_item_only():
    gold = [_reply([("INTEREST", "jazz"), ("INTEREST", "jazz piano")])]
    pred = [_reply([("INTEREST", "jazz piano")])]
    m = extraction_metrics(pred, gold, matching="lenient")
    assert m["attribute_precision"] == 100.0 and m["attribute_recall"] == 50.0


def test_unknown_matching_is_refused():
    with pytest.raises(ValueError, match="matching"):
        extraction_metrics([_reply()], [_reply()], matching="fuzzy")


def _record(text, attributes=(), aspects=(), sentiment="NEUTRAL", split="train"):
    return {"text": text, "output": json.loads(_reply(attributes, aspects, sentiment)), "split": split}


def test_natural_labels_are_checked_against_the_users_words():
    assert check_record(_record("i cycle to work most days", [("BEHAVIOR", "cycle to work")])) == []
    assert check_record(_record("it took three weeks to arrive", aspects=[("delivery", "NEGATIVE")],
                                sentiment="NEGATIVE")) == []  # a common implied aspect
    problems = check_record(_record("Agent: many guests love our spa\nUser: ok. when is checkout?",
                                    aspects=[("spa", "POSITIVE")], sentiment="POSITIVE"))
    assert problems and "spa" in problems[0]  # the agent's words are not the user's
    assert check_record(_record("hi", split="test"))[0].startswith("'split'")
    assert any("sentiment" in p for p in check_record({"text": "x", "split": "dev", "output": {
        "attributes": [], "aspects": [], "sentiment": "HAPPY"}}))


def test_user_lines_drop_the_agents_turns():
    assert user_lines("Agent: hello\nUser: my order is late\nAgent: sorry") == " my order is late"
    assert user_lines("no speakers here") == "no speakers here"
