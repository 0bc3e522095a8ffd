"""Normalization and PII redaction (finetune/data/normalize.py, redact.py, clean.py)."""

from collections import Counter

import pytest

from finetune.data.clean import clean_conversation
from finetune.data.config import CleanConfig
from finetune.data.normalize import normalize_text
from finetune.data.records import Conversation, Reject
from finetune.data.redact import luhn_ok, redact

ALL = ["url", "email", "phone", "ip", "card"]


def test_normalize_nfc_line_endings_spaces_and_controls():
    decomposed = "cafe\u0301"  # e + combining acute
    assert normalize_text(decomposed) == "caf\u00e9"
    assert normalize_text("a\r\nb\rc") == "a\nb\nc"
    assert normalize_text("a\u00a0b\u3000c") == "a b c"
    assert normalize_text("x\x00y\x07z\u200b\ufeff") == "xyz"
    assert normalize_text("  lead and trail  \n\n\n\n\nnext   line   ") == "lead and trail\n\nnext line"
    assert normalize_text("tab\tkept") == "tab\tkept"


def test_normalize_keeps_code_indentation_and_emoji_sequences():
    code = "def f():\n    return  1"
    assert normalize_text(code) == "def f():\n    return 1"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # joined by ZWJ: must stay one emoji
    assert normalize_text(family) == family


@pytest.mark.parametrize("text, expected, kind", [
    ("write to john.doe+x@example.co.uk today", "write to <EMAIL> today", "email"),
    ("see https://example.com/a?b=1.", "see <URL>.", "url"),
    ("(docs at www.python.org)", "(docs at <URL>)", "url"),
    ("server 192.168.10.254 is down", "server <IP> is down", "ip"),
    ("v6 fe80::1ff:fe23:4567:890a here", "v6 <IP> here", "ip"),
    ("card 4111 1111 1111 1111 ok", "card <CARD> ok", "card"),
    ("card 5500-0000-0000-0004", "card <CARD>", "card"),
    ("call +44 20 7946 0958 now", "call <PHONE> now", "phone"),
    ("call (415) 555-2671 now", "call <PHONE> now", "phone"),
    ("ruf +49 30 901820 an", "ruf <PHONE> an", "phone"),
])
def test_each_kind_is_replaced_by_its_placeholder_and_counted(text, expected, kind):
    counts = Counter()
    assert redact(text, ALL, "US", counts) == expected
    assert counts == Counter({kind: 1})


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112",  # fails the Luhn check
    "version 1.2.3 and 999.1.1.1",  # not an IPv4 address
    "at 10:30:00 on 2024-01-02",
    "we sold 12345678 units",
    "mail me at example dot com",
])
def test_lookalikes_are_left_alone(text):
    counts = Counter()
    assert redact(text, ALL, "US", counts) == text
    assert not counts


def test_only_enabled_kinds_are_redacted():
    counts = Counter()
    text = "a@b.io https://x.org"
    assert redact(text, ["email"], "US", counts) == "<EMAIL> https://x.org"
    assert counts == Counter({"email": 1})


def test_phone_region_reads_national_numbers():
    assert redact("ring 030 901820", ["phone"], "DE", Counter()) == "ring <PHONE>"
    assert redact("ring 030 901820", ["phone"], "US", Counter()) == "ring 030 901820"


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")


def conv(*contents):
    roles = ["user", "assistant"] * len(contents)
    return Conversation([{"role": r, "content": c} for r, c in zip(roles, contents)], {}, "f:1", raw={"x": 1})


def test_clean_conversation_redacts_every_message_and_counts():
    counts = Counter()
    out = clean_conversation(conv("mail a@b.io", "ok, and c@d.io too"), CleanConfig(), counts)
    assert [m["content"] for m in out.messages] == ["mail <EMAIL>", "ok, and <EMAIL> too"]
    assert counts == Counter({"email": 2})


def test_message_empty_after_cleaning_is_rejected():
    out = clean_conversation(conv("hello", " \u200b\x00 "), CleanConfig(), Counter())
    assert isinstance(out, Reject) and (out.stage, out.code) == ("clean", "empty_message")
    assert out.record == {"x": 1}  # the original record goes to rejects.jsonl


def test_normalize_can_be_turned_off():
    out = clean_conversation(conv("cafe\u0301  x", "y"), CleanConfig(normalize=False, redact=[]), Counter())
    assert out.messages[0]["content"] == "cafe\u0301  x"
