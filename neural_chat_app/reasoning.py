"""Thinking models: the reasoning a reply starts with, kept apart from the answer.

Qwen 3 and Qwen 3.5 reason in <think>...</think>, Gemma 4 in a thought channel (<|channel>thought ... <channel|>),
Ministral 3 Reasoning and Magistral in [THINK]...[/THINK]. The chat template says which (the closing marker it
writes), whether thinking can be switched (`enable_thinking`: Qwen 3, Qwen 3.5, Gemma 4), and whether the generation
prompt opens the block itself (Qwen 3.5, thinking on): then the reply starts inside it.

A reply's raw text, as the model writes it, is `raw_reply`: the opener the prompt wrote comes first, so the text
says where its reasoning is. `ReasoningSplitter` cuts it into reasoning and answer as it streams. The chatbot
returns the answer; the server sends the reasoning as OpenAI's `reasoning_content` (the name DeepSeek's API and
vLLM use) and Ollama's `thinking`, and the conversation log keeps it in the reply's metadata, out of the text that
fine-tuning reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from finetune.chat_template import template_text, thinking_switch

# (opening, closing) marker of each family's reasoning, found by the closing marker in the chat template
MARKERS = (("<think>", "</think>"), ("<|channel>thought", "<channel|>"), ("[THINK]", "[/THINK]"))


class Thought(str):
    """A piece of reasoning, among a reply's text chunks (the server's routes)."""


@dataclass(frozen=True)
class ThinkingFormat:
    open: str
    close: str
    switch: bool  # the template reads enable_thinking


def thinking_format(tokenizer) -> ThinkingFormat | None:
    """The reasoning markers of the model's chat template, or None for a model that does not think."""
    markers = template_markers(template_text(tokenizer))
    return ThinkingFormat(*markers, thinking_switch(tokenizer)) if markers else None


def template_markers(template: str) -> tuple[str, str] | None:
    """(opening, closing) reasoning markers a chat template (its text) writes, or None."""
    return next(((opening, closing) for opening, closing in MARKERS if closing in (template or "")), None)


def check_thinking(tokenizer, thinking: bool | None) -> None:
    """Refuse a thinking setting the model cannot follow: on for a model that does not think, off for one that
    always does (its template has no switch)."""
    if thinking is None:
        return
    fmt = thinking_format(tokenizer)
    asked = "(GenerationConfig.thinking; Ollama's think; OpenAI's chat_template_kwargs.enable_thinking, " \
            "reasoning_effort)"
    if thinking and fmt is None:
        raise ValueError(f"thinking on was asked for, and this model does not think: its chat template writes no "
                         f"reasoning block. Leave it unset {asked}")
    if not thinking and fmt is not None and not fmt.switch:
        raise ValueError(f"thinking off was asked for, and this model always thinks (in {fmt.open}...{fmt.close}): "
                         f"its chat template has no enable_thinking switch. Leave it unset {asked}")


def default_thinking(tokenizer, wanted: bool) -> bool | None:
    """A server's default thinking setting where this model can follow it, else None (its own default)."""
    try:
        check_thinking(tokenizer, wanted)
    except ValueError:
        return None
    return wanted


def marker_tokens(tokenizer) -> dict[int, str]:
    """Special tokens that write a reasoning marker (Gemma 4's <|channel>, Ministral's [THINK]): decoding skips
    special tokens, so the detokenizer writes these ones itself."""
    fmt = thinking_format(tokenizer)
    if fmt is None:
        return {}
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {i: t.content for i, t in decoder.items()
            if getattr(t, "special", False) and t.content and (t.content in fmt.open or t.content in fmt.close)}


def opened_by_prompt(tokenizer, prompt_ids: list[int], fmt: ThinkingFormat) -> str:
    """The opening marker when the prompt ends inside a reasoning block (Qwen 3.5 with thinking on), else ""."""
    tail = tokenizer.decode(prompt_ids[-16:], skip_special_tokens=False)
    return fmt.open if tail.rfind(fmt.open) > tail.rfind(fmt.close) else ""


def raw_reply(chunks: Iterator[str], opener: str) -> Iterator[str]:
    """The reply as the model wrote it, the opener its prompt wrote first."""
    if opener:
        yield opener
    yield from chunks


class ReasoningSplitter:
    """Cuts a raw reply into ("reasoning", text) and ("content", text) pieces as it streams. A reply that opens
    with the opening marker reasons until the closing one; one that does not is all answer. Whitespace around
    the reasoning and before the answer is the template's, not the model's words: it is dropped. What may still
    begin a marker is held back until the next piece tells."""

    def __init__(self, fmt: ThinkingFormat):
        self.fmt = fmt
        self.state = "start"  # -> "reasoning" -> "content"
        self.held = ""
        self.content_from: int | None = None  # where the answer starts in the raw text
        self.raw_chars = 0
        self.reasoned = False  # some reasoning was sent

    def feed(self, chunk: str) -> list[tuple[str, str]]:
        self.raw_chars += len(chunk)
        self.held += chunk
        out: list[tuple[str, str]] = []
        while True:
            if self.state == "start":
                stripped = self.held.lstrip()
                if stripped.startswith(self.fmt.open):
                    self.held, self.state = stripped[len(self.fmt.open):], "reasoning"
                    continue
                if stripped and not self.fmt.open.startswith(stripped):
                    self._to_content(self.held)
                    continue
                return out
            if self.state == "reasoning":
                if not self.reasoned:  # the template's newline after the opener is not the model's words
                    self.held = self.held.lstrip()
                at = self.held.find(self.fmt.close)
                if at >= 0:
                    if self.held[:at].rstrip():
                        out.append(("reasoning", self.held[:at].rstrip()))
                        self.reasoned = True
                    self._to_content(self.held[at + len(self.fmt.close):])
                    continue
                # send what can be neither part of the closing marker nor whitespace before it
                keep = _partial_suffix(self.held, self.fmt.close)
                body = self.held[: len(self.held) - keep]
                send = body.rstrip()
                if send:
                    out.append(("reasoning", send))
                    self.reasoned = True
                self.held = body[len(send):] + self.held[len(self.held) - keep:]
                return out
            if self.held:  # content
                if self.content_from is None:
                    stripped = self.held.lstrip()
                    if not stripped:
                        return out
                    self.content_from = self.raw_chars - len(stripped)
                    self.held = stripped
                out.append(("content", self.held))
                self.held = ""
            return out

    def _to_content(self, rest: str) -> None:
        self.state, self.held = "content", rest

    def finish(self) -> list[tuple[str, str]]:
        """What is still held at the end: unfinished reasoning (a reply cut short while thinking) stays reasoning."""
        held, self.held = self.held, ""
        if self.state == "reasoning":
            return [("reasoning", held.rstrip())] if held.strip() else []
        if self.state == "start":
            held = held.lstrip()
            if held and self.fmt.open.startswith(held):  # cut short inside the opening marker
                return []
        if not held.strip():
            return []
        if self.content_from is None:
            self.content_from = self.raw_chars - len(held.lstrip())
            held = held.lstrip()
        return [("content", held)]


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker`."""
    return next((n for n in range(min(len(marker) - 1, len(text)), 0, -1) if text.endswith(marker[:n])), 0)


def answer_chunks(chunks: Iterator[str], fmt: ThinkingFormat | None) -> Iterator[str]:
    """The answer of a raw reply, as it streams."""
    if fmt is None:
        yield from chunks
        return
    splitter = ReasoningSplitter(fmt)
    for chunk in chunks:
        for kind, text in splitter.feed(chunk):
            if kind == "content":
                yield text
    yield from (text for kind, text in splitter.finish() if kind == "content")


def split_reasoning(text: str, fmt: ThinkingFormat | None) -> tuple[str, str]:
    """(reasoning, answer) of a whole raw reply."""
    if fmt is None:
        return "", text
    splitter = ReasoningSplitter(fmt)
    parts = splitter.feed(text) + splitter.finish()
    return ("".join(t for k, t in parts if k == "reasoning"), "".join(t for k, t in parts if k == "content"))
