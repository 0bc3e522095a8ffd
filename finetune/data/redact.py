"""Replace personal data with typed placeholders (`<EMAIL>`, `<URL>`, `<IP>`, `<CARD>`, `<PHONE>`) and count them.

Phone numbers are found by Google's libphonenumber port (`phonenumbers`), which knows every country's
numbering plan; IP addresses are confirmed by `ipaddress`, card numbers by the Luhn checksum. The order
matters: e-mails before URLs (a URL pattern would eat the domain), cards and IPs before phones (their digit
runs can look like phone numbers).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter
from collections.abc import Callable

PLACEHOLDERS = {"email": "<EMAIL>", "url": "<URL>", "ip": "<IP>", "card": "<CARD>", "phone": "<PHONE>"}
ORDER = ("email", "url", "ip", "card", "phone")

_EMAIL = re.compile(r"\b[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
_URL = re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"']+", re.IGNORECASE)
_URL_TAIL = ".,;:!?)]}'\""
# (?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.]*\d), written to start with \d so the regex engine skips to the next
# digit in a C loop instead of trying a match at every character: 3x faster, same matches (a test checks it).
_IPV4 = re.compile(r"\d(?<![\d.]\d)\d{0,2}(?:\.\d{1,3}){3}(?![\d.]*\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_CARD = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
_DIGIT = re.compile(r"\d")
_NEEDS_DIGITS = {"ip", "card", "phone"}
_FEWEST_DIGITS = {"card": 13}  # phone: _fewest_phone_digits(region)
# Cheap substring tests that rule a kind out before its regex scans the text.
_MAY_CONTAIN = {
    "email": lambda t: "@" in t,
    "url": lambda t: "://" in t or "www." in t or "WWW." in t,
    "ip": lambda t: "." in t or ":" in t,
    "card": lambda t: True,
    "phone": lambda t: True,
}


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _sub(pattern: re.Pattern, text: str, placeholder: str, accept: Callable[[str], bool] | None = None):
    count = 0

    def repl(m: re.Match) -> str:
        nonlocal count
        if accept is not None and not accept(m.group()):
            return m.group()
        count += 1
        return placeholder

    return pattern.sub(repl, text), count


def _url(text: str) -> tuple[str, int]:
    count = 0

    def repl(m: re.Match) -> str:
        nonlocal count
        url = m.group()
        kept = url.rstrip(_URL_TAIL)  # the sentence's full stop or closing bracket is not part of the URL
        count += 1
        return PLACEHOLDERS["url"] + url[len(kept):]

    return _URL.sub(repl, text), count


def _is_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True


def _ip(text: str, digits: int | None = None) -> tuple[str, int]:
    n4 = n6 = 0
    if "." in text and (digits is None or digits >= 4):  # a.b.c.d: 4 digits and a dot at least
        text, n4 = _sub(_IPV4, text, PLACEHOLDERS["ip"], _is_ip)
    if text.count(":") >= 2:  # the IPv6 pattern has 2 colons at least
        text, n6 = _sub(_IPV6, text, PLACEHOLDERS["ip"], lambda s: s.count(":") >= 2 and _is_ip(s))
    return text, n4 + n6


def _card(text: str) -> tuple[str, int]:
    return _sub(_CARD, text, PLACEHOLDERS["card"], lambda s: luhn_ok(re.sub(r"\D", "", s)))


def _phone(text: str, region: str) -> tuple[str, int]:
    import phonenumbers

    fewest = _fewest_phone_digits(region)
    digits = _ascii_digits(text)
    if (digits < fewest) if digits is not None else not _digits_at_least(fewest).search(text):
        return text, 0
    if _no_number_can_be_valid(text, region):
        return text, 0
    matches = list(_matcher_class()(text, region, leniency=phonenumbers.Leniency.VALID))
    for m in reversed(matches):  # from the end, so earlier offsets stay valid
        text = text[: m.start] + PLACEHOLDERS["phone"] + text[m.end :]
    return text, len(matches)


@functools.cache
def _fewest_phone_digits(region: str) -> int:
    """The fewest digits a valid phone number can have in text read for `region`, from libphonenumber's metadata.

    A text with fewer digits skips the matcher, the slowest step of cleaning ("case 12"). The bound is the least
    of the region's own shortest number (4 digits in Niue or Austria, 10 in the US) and the shortest number written
    with a country code anywhere (6 digits: +43, +49 or +98 and 4 more). Possible lengths bound valid ones.
    """
    import phonenumbers

    def shortest(metadata) -> int | None:
        lengths = [n for n in (metadata.general_desc.possible_length if metadata else ()) if n > 0]
        return min(lengths) if lengths else None

    international = min(
        len(str(code)) + n
        for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()
        for r in regions
        if (n := shortest(phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, r))) is not None
    )
    national = shortest(phonenumbers.PhoneMetadata.metadata_for_region(region.upper()))
    return min(international, national) if national is not None else international


@functools.cache
def _digits_at_least(n: int) -> re.Pattern:
    return re.compile(r"\d(?:\D*\d){" + str(n - 1) + "}")


@functools.cache
def _matcher_class() -> type:
    """libphonenumber's matcher with two shortcuts, made here so that `phonenumbers` is imported only when used.

    Most candidates the matcher finds are not phone numbers (order and case numbers like "123456-0"), and it
    spends most of its time proving that: `is_valid_number` tries each region of the country code in turn (25
    for +1), each with its own patterns. A valid number's national part always matches the general pattern
    (and one of the lengths) of some region of its country code (`_number_type_helper` checks that first), so
    one combined pattern per country code rules most candidates out; the others take the matcher's own path.
    The shortcut only returns "no match" where that path would, so the matches are the same (a test compares).
    Before that, a candidate of plain digits and separators is ruled out with its inner matches and without being
    parsed when no run of its digits can be a valid number of the region's own code (`_cannot_be_valid`): the
    case numbers are, and parsing them was half of redact's time.
    """
    import phonenumbers
    from phonenumbers import phonenumbermatcher
    from phonenumbers.phonenumbermatcher import PhoneNumberMatcher

    inner_tries = 2 * len(phonenumbermatcher._INNER_MATCHES) + 1  # the most tries one character can cost

    class Matcher(PhoneNumberMatcher):
        def __init__(self, text, region, leniency=phonenumbers.Leniency.VALID, max_tries=65535, **kwargs):
            super().__init__(text, region, leniency=leniency, max_tries=max_tries, **kwargs)
            # Skipping a candidate's inner matches spends fewer of the matcher's tries than it would; that changes
            # nothing only while it could not run out of tries on this text anyway (a try per candidate, two and
            # one per inner match found: at most `inner_tries` per character).
            self._floor = _national_floor(region.upper()) if (
                leniency == phonenumbers.Leniency.VALID and text and region
                and inner_tries * len(text) < max_tries) else None

        def _extract_match(self, candidate, offset):
            if self._floor is not None and _cannot_be_valid(candidate, *self._floor):
                return None  # neither the candidate nor any part of it (its inner matches) can be valid
            return super()._extract_match(candidate, offset)

        def _parse_and_verify(self, candidate, offset):
            if self.leniency == phonenumbers.Leniency.VALID:
                try:
                    number = phonenumbers.parse(candidate, self.preferred_region, keep_raw_input=True)
                except phonenumbers.NumberParseException:
                    return None  # the matcher's own parse raises the same, and it returns None then
                nsn = phonenumbers.national_significant_number(number)
                if not _may_be_valid(number.country_code, nsn):
                    return None
            return super()._parse_and_verify(candidate, offset)

    return Matcher


@functools.cache
def _national_floor(region: str) -> tuple[re.Pattern | None, frozenset[int], re.Pattern] | None:
    """(the region's international dialling prefix, or None where it has none; the lengths and the general pattern
    of valid national numbers of the region's own country code, as `_general_patterns`), or None where
    `_cannot_be_valid` cannot decide for this region: no metadata, no lengths, a prefix pattern that looks around,
    or a national prefix transform rule (it may add digits)."""
    import phonenumbers

    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if meta is None or meta.national_prefix_transform_rule:
        return None
    lengths, pattern = _general_patterns(meta.country_code)
    idd = meta.international_prefix
    if not lengths or pattern is None or (idd and re.search(r"\(\?[=!<]|[$^]|\\[bBAZ]", idd)):
        return None
    return (re.compile(idd) if idd else None), lengths, pattern


_NOT_DIGITS = bytes(b for b in range(256) if not 48 <= b <= 57)
_PLAIN_NUMBER = re.compile(r"[0-9 ().\/-]*")  # digits and separators: no plus sign, letter or extension mark
# ASCII characters a matcher candidate can hold between a digit (or its leading bracket) and the next digit: its
# punctuation (x among it), an extension's mark and word (";ext=", "ext.", "#", "int" ...); _NOT_LETTER without the
# letters. A candidate holding a letter has its first one after a digit and only _NOT_LETTER characters, or at most
# 10 characters after its leading bracket, and a digit after it with only _IN_NUMBER characters between: where this
# finds none of those, no candidate holds a letter. Each run is read once ((?=(x*))\1 takes all of x* and never
# gives any back, as a possessive x*+ would), so the search stays linear in the text.
_IN_NUMBER = r"[-A-Za-z ().\[\]/~;=:,\t#]"
_NOT_LETTER = r"[- ().\[\]/~;=:,\t#]"
# One character class first, so the regex engine skips ahead to a digit or bracket in a C loop (ASCII text only).
_LETTER_IN_NUMBER = re.compile(rf"[0-9(\[](?:(?<=[0-9])(?=({_NOT_LETTER}*))\1[A-Za-z](?=({_IN_NUMBER}*))\2[0-9]"
                               rf"|(?<=[(\[]){_NOT_LETTER}{{0,10}}[A-Za-z]{_IN_NUMBER}{{0,10}}[0-9])")
_TEXT_DIGITS_CHECKED = 24  # more digits than this in a text: the matcher looks (runs to try grow quadratically)


def _cannot_be_valid(candidate: str, idd: re.Pattern | None, lengths: frozenset[int], pattern: re.Pattern) -> bool:
    """True only when neither `candidate` nor any part of it can parse (for the matcher's region) to a valid
    number. It holds digits and separators only (no plus sign, no letter that may stand for a digit, no extension
    mark), so its digits and `_digits_cannot_be_valid` decide."""
    if _PLAIN_NUMBER.fullmatch(candidate) is None:
        return False
    return _digits_cannot_be_valid(candidate.encode("ascii").translate(None, _NOT_DIGITS).decode("ascii"), idd,
                                   lengths, pattern)


def _no_number_can_be_valid(text: str, region: str) -> bool:
    """True only when the matcher can find no valid number in `text`, decided from the text's digits alone: it is
    ASCII without a plus sign, and no candidate the matcher could take holds a letter (`_LETTER_IN_NUMBER`), so
    each candidate's digits, and its inner matches', are a run of the text's digits (parsing drops leading
    digits, a country code or national prefix, and trailing ones, an extension), and `_digits_cannot_be_valid`
    rules them all out. Most texts with a case or order number skip the matcher, whose candidate search was
    most of redact's time."""
    floor = _national_floor(region.upper())
    if floor is None or not text.isascii() or "+" in text or _LETTER_IN_NUMBER.search(text) is not None:
        return False
    digits = text.encode("ascii").translate(None, _NOT_DIGITS)
    return len(digits) <= _TEXT_DIGITS_CHECKED and _digits_cannot_be_valid(digits.decode("ascii"), *floor)


def _digits_cannot_be_valid(digits: str, idd: re.Pattern | None, lengths: frozenset[int],
                            pattern: re.Pattern) -> bool:
    """True when no run of `digits` can be the national number of a valid number of the region's own country code:
    the region's international prefix is nowhere in them (so no run of them starts one, and the region's code
    applies: no plus sign), and no run of a valid length matches the code's general pattern (`_may_be_valid`).
    Parsing only drops digits at the ends (a country code, a national prefix, an extension; no transform rule
    here), so each national number a candidate of these digits can give is such a run."""
    if idd is not None and idd.search(digits) is not None:
        return False
    n = len(digits)
    for size in lengths:
        for start in range(n - size + 1):
            if pattern.fullmatch(digits[start : start + size]) is not None:
                return False
    return True


@functools.cache
def _general_patterns(country_code: int) -> tuple[frozenset[int] | None, re.Pattern | None]:
    """(every region's possible lengths, or None when a region lists none; one pattern matching any region's
    general national number pattern, or None when a region has no metadata) for a country calling code."""
    import phonenumbers

    lengths: set[int] | None = set()
    patterns = []
    for region in phonenumbers.region_codes_for_country_code(country_code):
        meta = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
        if meta is None or meta.general_desc is None or not meta.general_desc.national_number_pattern:
            return None, None
        if lengths is not None and meta.general_desc.possible_length:
            lengths.update(meta.general_desc.possible_length)
        else:
            lengths = None
        patterns.append(f"(?:{meta.general_desc.national_number_pattern})")
    if not patterns:
        return None, None
    return (None if lengths is None else frozenset(lengths)), re.compile("|".join(patterns))


def _may_be_valid(country_code: int, nsn: str) -> bool:
    """False only when no region of `country_code` can call `nsn` valid. re.fullmatch accepts whatever
    libphonenumber's own full match accepts (it backtracks into alternatives too), so this never rejects a valid
    number."""
    lengths, pattern = _general_patterns(country_code)
    if pattern is None:
        return True
    if lengths is not None and len(nsn) not in lengths:
        return False
    return pattern.fullmatch(nsn) is not None


def _ascii_digits(text: str) -> int | None:
    """How many digits an ASCII text holds (a C loop over bytes); None for other text, where \\d is more."""
    if not text.isascii():
        return None
    data = text.encode("ascii")
    return len(data) - len(data.translate(None, b"0123456789"))


def redact(text: str, kinds: list[str], region: str, counts: Counter) -> str:
    """Return `text` with each enabled kind replaced; add the number of replacements per kind to `counts`."""
    # Placeholders hold no digits, so the count taken here bounds every later text: a kind whose least number
    # of digits is not there is skipped without its regex scanning the text (13 for a card; a phone's depends on the
    # region, _fewest_phone_digits).
    digits = _ascii_digits(text)
    has_digits = digits > 0 if digits is not None else _DIGIT.search(text) is not None
    for kind in ORDER:
        if kind not in kinds or not _MAY_CONTAIN[kind](text) or (kind in _NEEDS_DIGITS and not has_digits):
            continue
        fewest = _fewest_phone_digits(region) if kind == "phone" else _FEWEST_DIGITS.get(kind, 0)
        if digits is not None and digits < fewest:
            continue
        if kind == "email":
            text, n = _sub(_EMAIL, text, PLACEHOLDERS["email"])
        elif kind == "url":
            text, n = _url(text)
        elif kind == "ip":
            text, n = _ip(text, digits)
        elif kind == "card":
            text, n = _card(text)
        else:
            text, n = _phone(text, region)
        if n:
            counts[kind] += n
    return text
