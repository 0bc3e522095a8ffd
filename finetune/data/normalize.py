"""Text normalization: Unicode NFC, LF line endings, one kind of space, no control characters."""

from __future__ import annotations

import re
import unicodedata

# C0/C1 control characters except tab and newline, plus invisible characters that only hide differences
# (zero-width space, BOM, word joiner). The zero-width joiner stays: emoji sequences need it.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff]")
# Unicode space separators (NBSP, thin space, ideographic space ...) are all written as a plain space.
_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
# Runs of spaces after a word collapse; indentation at the start of a line is left alone (code blocks).
_INNER_RUN = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_TRAILING = re.compile(r"[ \t]+(?=\n|$)")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    if not text.isascii():  # ASCII is already NFC and has no Unicode spaces: most text skips two passes
        text = unicodedata.normalize("NFC", text)
        text = _SPACES.sub(" ", text)
    # Each pass below runs only when a substring test shows it could match (the tests are C loops, the passes
    # regex scans): printable text has no control characters, an inner run needs two spaces or a tab, ...
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isprintable():
        text = _CONTROL.sub("", text)
    if "  " in text or "\t" in text:
        text = _INNER_RUN.sub(" ", text)
    if " \n" in text or "\t\n" in text or text.endswith((" ", "\t")):
        text = _TRAILING.sub("", text)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()
