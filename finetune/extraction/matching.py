"""When two phrases name the same thing: the lenient matching rule of extraction scoring and of label checks.

Models (and annotators) say "cycle to work" where the reference says "cycling to work", or "the wifi" for "wifi".
Two phrases match when at least half of the words of the longer one have a counterpart in the other, a counterpart
being the same word or the same stem with another ending (run/running, hike/hiking, review/reviews; not car/cat).
Case, punctuation, apostrophes and a few function words (the, my, to, ...) do not count.

    phrases_match("cycling to work", "cycle to work")  -> True   (2 of 2 content words)
    phrases_match("hiking", "hiking in the alps")       -> True   (1 of 2: "hiking", "alps")
    phrases_match("late night gaming", "gaming")        -> False  (1 of 3)
"""

from __future__ import annotations

import os
import re

FUNCTION_WORDS = frozenset({"the", "a", "an", "my", "our", "your", "his", "her", "their", "to", "of", "and", "or",
                            "in", "on", "for", "with", "at", "is", "it", "i", "me", "be", "up", "some", "very"})


def phrase_words(text: str) -> list[str]:
    """Lower-case words of `text`, apostrophes dropped (don't -> dont)."""
    return re.findall(r"[a-z0-9]+", str(text).lower().replace("'", "").replace("\u2019", ""))


def content_words(text: str) -> list[str]:
    words = phrase_words(text)
    return [w for w in words if w not in FUNCTION_WORDS] or words


def same_word(a: str, b: str) -> bool:
    """Equal, or one stem with another ending: the common prefix is 3+ letters and all but 2 of the shorter word."""
    common = len(os.path.commonprefix([a, b]))
    return a == b or common >= max(3, min(len(a), len(b)) - 2)


def _covered(words: list[str], others: list[str]) -> int:
    return sum(any(same_word(w, o) for o in others) for w in words)


def phrases_match(a: str, b: str) -> bool:
    """The lenient rule: at least half of the longer phrase's content words have a counterpart in the other."""
    wa, wb = content_words(a), content_words(b)
    if not wa or not wb:
        return False
    longer, shorter = (wa, wb) if len(wa) >= len(wb) else (wb, wa)
    return 2 * _covered(longer, shorter) >= len(longer)


def grounded(phrase: str, text: str) -> bool:
    """A label's phrase is grounded in `text` when it is a span of it or at least half of its content words have
    a counterpart in the text (a close paraphrase)."""
    words, text_words = phrase_words(phrase), phrase_words(text)
    if not words:
        return False
    if f" {' '.join(words)} " in f" {' '.join(text_words)} ":
        return True
    content = content_words(phrase)
    return 2 * _covered(content, text_words) >= len(content)
