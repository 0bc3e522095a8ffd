"""The safety checker: refuse queries that contain sensitive terms, mask (or refuse) replies that contain them.

Like NeuralChat's SafetyChecker, it works from a word list (`dict_path`), plus optional regular expressions.
Replies are filtered while they stream: the filter holds back enough text to see a whole match before it
sends anything, so a term split across chunks is masked all the same.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from neural_chat_app.plugins.settings import SafetyCheckerArgs

# The default terms: a short starting list of profanity and requests for weapons or violence, matched as whole
# words in any case. Replace or extend it with SafetyCheckerArgs(dict_path=..., terms=..., use_default_terms=False).
DEFAULT_TERMS = (
    "fuck", "fucking", "shit", "bitch", "asshole", "cunt", "motherfucker",
    "build a bomb", "make a bomb", "make a pipe bomb", "make nerve gas", "make ricin", "buy a gun illegally",
    "how to kill someone",
)  # fmt: skip


def read_terms(path: str | Path) -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"safety_checker dict_path: no such file {path}")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class SafetyChecker:
    def __init__(self, args: SafetyCheckerArgs | None = None):
        self.args = args = args or SafetyCheckerArgs()
        terms = list(args.terms)
        if args.use_default_terms:
            terms += DEFAULT_TERMS
        if args.dict_path:
            terms += read_terms(args.dict_path)
        parts = [r"\s+".join(map(re.escape, t.split())) for t in sorted(set(terms), key=len, reverse=True)]
        alternatives = [rf"(?<!\w)(?:{'|'.join(parts)})(?!\w)"] if parts else []
        alternatives += [f"(?:{p})" for p in args.patterns]
        self.regex = re.compile("|".join(alternatives), re.IGNORECASE) if alternatives else None
        # The longest text a match can span, with margin: patterns have no bound, so allow 64 characters.
        self.hold_back = max([64, *(2 * len(t) + 8 for t in terms)])

    def matches(self, text: str) -> list[str]:
        """The sensitive terms found in `text` (as written there)."""
        return [m.group(0) for m in self.regex.finditer(text)] if self.regex else []

    def check_query(self, query: str) -> str | None:
        """The refusal message when the query is to be refused, else None."""
        if self.args.check_query and self.matches(query):
            return self.args.refusal_message
        return None

    def mask(self, text: str) -> str:
        return self.regex.sub(lambda m: "*" * len(m.group(0)), text) if self.regex else text

    def filter_reply(self, chunks: Iterator[str]) -> Iterator[str]:
        if not self.args.check_reply or self.regex is None:
            yield from chunks
            return
        if self.args.reply_action == "refuse":
            text = "".join(chunks)
            yield self.args.reply_refusal_message if self.matches(text) else text
            return
        masker = StreamMasker(self)
        for chunk in chunks:
            out = masker.feed(chunk)
            if out:
                yield out
        tail = masker.flush()
        if tail:
            yield tail

    async def afilter_reply(self, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        """filter_reply for the server's async chunk streams."""
        if not self.args.check_reply or self.regex is None:
            async for chunk in chunks:
                yield chunk
            return
        if self.args.reply_action == "refuse":
            parts = [chunk async for chunk in chunks]
            text = "".join(parts)
            yield self.args.reply_refusal_message if self.matches(text) else text
            return
        masker = StreamMasker(self)
        async for chunk in chunks:
            out = masker.feed(chunk)
            if out:
                yield out
        tail = masker.flush()
        if tail:
            yield tail


class StreamMasker:
    """Masks matches in a text that arrives in pieces; what it returns never changes later."""

    def __init__(self, checker: SafetyChecker):
        self.checker = checker
        self.buf = ""
        self.prev = ""  # the last character already sent: the context of the `(?<!\w)` word boundary

    def feed(self, chunk: str) -> str:
        self.buf += chunk
        cut = len(self.buf) - self.checker.hold_back
        return self._emit(cut) if cut > 0 else ""

    def flush(self) -> str:
        return self._emit(len(self.buf))

    def _emit(self, cut: int) -> str:
        off = len(self.prev)
        text = self.prev + self.buf
        out = list(text)
        for m in self.checker.regex.finditer(text, off):
            if m.start() - off >= cut:
                break
            # A match that starts before the cut is whole here (hold_back is longer than any match): send it all.
            cut = max(cut, m.end() - off)
            out[m.start() : m.end()] = "*" * (m.end() - m.start())
        sent = "".join(out[off : off + cut])
        self.prev = self.buf[cut - 1] if cut else self.prev
        self.buf = self.buf[cut:]
        return sent
