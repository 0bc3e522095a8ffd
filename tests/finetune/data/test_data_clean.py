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
    assert redact("call 4002 tonight", ["phone"], "NU", Counter()) == "call <PHONE> tonight"  # Niue: 4 digits


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


def _reference_redact(text, region="US"):
    """redact() as it was before its shortcuts: every kind's regex on every text, IPv4 in its first form."""
    import re

    from finetune.data import redact as r

    ipv4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.]*\d)")
    counts = Counter()
    for kind in r.ORDER:
        if kind == "email":
            text, n = r._sub(r._EMAIL, text, r.PLACEHOLDERS["email"])
        elif kind == "url":
            text, n = r._url(text)
        elif kind == "ip":
            text, n4 = r._sub(ipv4, text, r.PLACEHOLDERS["ip"], r._is_ip)
            text, n6 = r._sub(r._IPV6, text, r.PLACEHOLDERS["ip"], lambda s: s.count(":") >= 2 and r._is_ip(s))
            n = n4 + n6
        elif kind == "card":
            text, n = r._card(text)
        else:
            import phonenumbers

            matches = list(phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID))
            for m in reversed(matches):
                text = text[: m.start] + r.PLACEHOLDERS["phone"] + text[m.end :]
            n = len(matches)
        if n:
            counts[kind] += n
    return text, counts


def test_redaction_shortcuts_change_nothing():
    """The digit counts, substring tests and the rewritten IPv4 pattern only skip work: same text, same counts."""
    import random

    rng = random.Random(11)
    pieces = ["10.0.0.7", "192.168.1.254", "1.2.3", "999.1.1.1", "1.2.3.4.5", "fe80::1ff:fe23:4567:890a", "::1",
              "a:b:c", "4111 1111 1111 1111", "5500-0000-0000-0004", "+1 415-555-2671", "(415) 555-2671",
              "ann@example.org", "https://x.org/a?b=1.", "www.python.org", "12345678", "v1.2", ".5.6.7.8",
              "٣٤٥", "1.2.3.4", "x", "word", " ", ". ", ":", "-", "7", "42", "4002", "+683 4002", "+43 1 234"]
    # Niue's numbers have 4 digits, and "+43 1 234" is 6 with Austria's code: the phone shortcut's digit bound
    # follows the region (it once said 7 everywhere and left "call 4002" unredacted in Niue).
    phones = Counter()
    for region in ("US", "NU", "AT"):
        for _ in range(200):
            t = "".join(rng.choice(pieces) + rng.choice(["", " ", ".", ":", "\n"]) for _ in range(rng.randint(0, 12)))
            counts = Counter()
            assert (redact(t, ALL, region, counts), counts) == _reference_redact(t, region), (region, t)
            phones[region] += counts["phone"]
    assert phones["NU"] > 0, phones


def test_phone_shortcut_changes_nothing():
    """The matcher's shortcut (no region's general pattern fits: not valid) finds what libphonenumber finds, for
    candidates that are numbers, nearly numbers and not numbers, in regions whose codes span 1 to 25 regions."""
    import random

    import phonenumbers

    from finetune.data.redact import _matcher_class

    rng = random.Random(5)
    found = 0
    pieces = ["Case 123456-0", "3123456", "555-2671", "415 555 2671", "+1 415-555-2671", "011 44 20 7946 0958",
              "+44 20 7946 0958", "020 7946 0958", "07700 900123", "+49 30 901820", "030 901820", "1-800-555-0199",
              "+683 4002", "4002", "(268) 464-1234", "+800 1234 5678", "12/03/2026", "10:30", "ext. 12", "x 7",
              "#12", "٠٧٧٠٠ ٩٠٠١٢٣", "1234567890123", "0049 30 901820", "+1", "99", "order 98765432"]
    for region in ("US", "GB", "DE", "NU", "FR"):
        for _ in range(150):
            t = "".join(rng.choice(pieces) + rng.choice([" ", ", ", ". ", "a", "\n"]) for _ in range(rng.randint(1, 6)))
            ours = [(m.start, m.end) for m in _matcher_class()(t, region, leniency=phonenumbers.Leniency.VALID)]
            theirs = phonenumbers.PhoneNumberMatcher(t, region, leniency=phonenumbers.Leniency.VALID)
            assert ours == [(m.start, m.end) for m in theirs], (region, t)
            found += len(ours)
    assert found > 200  # the texts hold real numbers, not only lookalikes


def test_candidate_shortcut_changes_nothing():
    """The matcher skips a candidate (and its inner matches) whose digits cannot hold a valid national number of
    the region's country code without parsing it; the matches stay libphonenumber's: numbers split by spaces,
    dots, slashes and hyphens, an international prefix inside the digits, regions with a national prefix transform
    rule (no shortcut), and a matcher with few tries (the shortcut spends fewer)."""
    import random

    import phonenumbers

    from finetune.data.redact import _cannot_be_valid, _matcher_class, _national_floor

    us = _national_floor("US")
    assert _cannot_be_valid("512345-0", *us) and not _cannot_be_valid("415-555-2671", *us)
    assert not _cannot_be_valid("5011234-0", *us)  # "011", the US international prefix: parsed as it was
    assert _national_floor("BR") is None  # a national prefix transform rule may add digits
    rng = random.Random(6)
    found = 0
    pieces = ["Case 512345-0", "5011234-0", "1 415 555 2671", "415.555.2671", "415/555/2671", "415 555 2671",
              "(415) 555 2671 (754) 223 3321", "12345 - 332-445-1234", "3324451234 8002341234", "0 11 44 20 7946 0958",
              "020 7946 0958", "07700 900123", "030 901820", "(11) 91234-5678", "090-1234-5678", "011 15 2345-6789",
              "2012-01-02 08:00", "12/03/2026", "211-227 (2003)", "1234567", "4002", "+683 4002", "x 12", "1x2x3x4"]
    for region in ("US", "GB", "DE", "NU", "BR", "JP", "AR", "IN"):
        for _ in range(150):
            t = "".join(rng.choice(pieces) + rng.choice([" ", ", ", ". ", "a", "-", "\n"])
                        for _ in range(rng.randint(1, 6)))
            for tries in (65535, 3):
                ours = [(m.start, m.end) for m in _matcher_class()(t, region, phonenumbers.Leniency.VALID, tries)]
                theirs = phonenumbers.PhoneNumberMatcher(t, region, phonenumbers.Leniency.VALID, tries)
                assert ours == [(m.start, m.end) for m in theirs], (region, tries, t)
                found += len(ours)
    assert found > 200


def test_text_shortcut_changes_nothing(monkeypatch):
    """A text whose digits cannot hold a valid number skips the matcher (`_no_number_can_be_valid`); the phones
    redacted stay libphonenumber's, with digits split by the matcher's punctuation, x among it (three letters
    make a vanity number whose letters count as digits), extensions, brackets, a plus sign and several numbers."""
    import random

    import phonenumbers

    from finetune.data import redact as redact_module

    def reference(t, region):
        for m in reversed(list(phonenumbers.PhoneNumberMatcher(t, region, leniency=phonenumbers.Leniency.VALID))):
            t = t[: m.start] + "<PHONE>" + t[m.end :]
        return t

    skipped = []
    decide = redact_module._no_number_can_be_valid
    monkeypatch.setattr(redact_module, "_no_number_can_be_valid", lambda t, r: skipped.append(decide(t, r))
                        or skipped[-1])
    assert decide("Is this Case 512345-0?", "US") and not decide("Call 415 555 2671", "US")
    assert not decide("415xxx2671", "US")  # x for 9: a letter in a candidate, which parsing may read as a digit
    assert redact("Niue: +683 4002", ["phone"], "US", Counter()) == "Niue: <PHONE>"  # not the US code's digits
    rng = random.Random(7)
    seps = ["x", "X", "xx", " x ", "-x-", "ext", "ext. ", "#", ";ext=", "int", " ", "-", "(", ")", "[", "]", ".", "/",
            "~", ",", "\t", " - ", "", "+", "+1 "]
    words = ["call ", "a ", "Case ", " or ", "tel ", ". ", "? "]
    found = 0
    for region in ("US", "GB", "DE", "NU", "AT", "IN"):
        for _ in range(400):
            parts = []
            for _ in range(rng.randint(1, 10)):
                r = rng.random()
                parts.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 5))) if r < 0.45 else
                             rng.choice(seps) if r < 0.85 else rng.choice(words))
            t = "".join(parts)
            counts = Counter()
            assert redact(t, ["phone"], region, counts) == reference(t, region), (region, t)
            found += counts["phone"]
    assert found > 20 and sum(skipped) > 200, (found, sum(skipped))


def test_letter_check_is_linear_in_the_text():
    """The text shortcut's look for a letter inside a number reads each run of the text once: a long message of
    words after a number took seconds per 40 KB with a backtracking pattern (quadratic), now milliseconds."""
    import time

    from finetune.data.redact import _LETTER_IN_NUMBER

    for text in ["5 " + "word " * 40_000, "(" * 40_000 + "a", "5(" + "( a" * 20_000, "1 a " * 20_000 + "."]:
        start = time.perf_counter()
        _LETTER_IN_NUMBER.search(text)
        assert time.perf_counter() - start < 0.5, text[:20]


def test_normalize_shortcuts_change_nothing():
    import random
    import re
    import unicodedata

    def reference(text):
        if not text.isascii():
            text = unicodedata.normalize("NFC", text)
            text = re.sub(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]", " ", text)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff]", "", text)
        text = re.sub(r"(?<=\S)[ \t]{2,}(?=\S)", " ", text)
        text = re.sub(r"[ \t]+(?=\n|$)", "", text)
        return re.sub(r"\n{3,}", "\n\n", text).strip()

    rng = random.Random(12)
    alphabet = ["a", "b", " ", "  ", "\t", "\n", "\r", "\r\n", "\x00", "\x85", "\u200b", "\u00a0", "\u3000", "é",
                "e\u0301", "\ufeff", "\x7f", "\u2028"]
    for _ in range(2000):
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        assert normalize_text(t) == reference(t), repr(t)
