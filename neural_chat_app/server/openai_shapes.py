"""OpenAI's response shapes for a Turn: whole bodies, SSE chunks, log-probabilities and tool calls."""

from __future__ import annotations

import json

from neural_chat_app.logits import finite
from neural_chat_app.reasoning import Thought
from neural_chat_app.streaming import Detokenizer


def sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _finish(choice) -> str:
    if choice.tool_calls:
        return "tool_calls"
    return "length" if choice.result.finish_reason == "length" else "stop"


def _token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


def kept_tokens(choice, kind: str) -> list:
    """The reply's TokenLogprobs that belong to its final text: a stop string cuts the tokens after it, and a chat
    reply leaves out its end-of-turn token (it has no text); completions keep it, as lm-evaluation-harness counts
    positions."""
    tokens = choice.result.tokens or []
    if kind == "chat" or choice.result.emitted_chars > len(choice.text):
        start = answer_offset(choice)
        return [t for t in tokens if start <= t.offset < start + len(choice.text)]
    return tokens


def answer_offset(choice) -> int:
    """Where a chat reply's answer starts among the backend's characters: after a thinking model's reasoning (whose
    tokens are not the answer's), 0 for any other reply."""
    return 0 if choice.content_from is None else max(choice.content_from - choice.result.opener_chars, 0)


def chat_logprobs(tokenizer, entries: list) -> dict:
    def one(token_id: int, logprob: float) -> dict:
        text = _token_text(tokenizer, token_id)
        return {"token": text, "logprob": finite(logprob), "bytes": list(text.encode("utf-8"))}

    return {
        "content": [{**one(t.token_id, t.logprob), "top_logprobs": [one(i, lp) for i, lp in t.top]} for t in entries],
        "refusal": None,
    }


def completion_logprobs(tokenizer, entries: list, offset: int = 0) -> dict:
    return {
        "tokens": [_token_text(tokenizer, t.token_id) for t in entries],
        "token_logprobs": [None if t.logprob is None else finite(t.logprob) for t in entries],
        "top_logprobs": [
            None if t.logprob is None else {_token_text(tokenizer, i): finite(lp) for i, lp in t.top}
            for t in entries
        ],
        "text_offset": [offset + t.offset for t in entries],
    }


def prompt_offsets(tokenizer, choice) -> list:
    """The echoed prompt's TokenLogprobs with their character offsets in the decoded prompt."""
    detokenizer, seen = Detokenizer(tokenizer), 0
    for entry in choice.prompt_tokens:
        entry.offset = seen
        seen += len(detokenizer.add(entry.token_id))
    return choice.prompt_tokens


def log_extra(choice) -> dict:
    """The reply's metadata in the conversation log: its tool calls, and a thinking model's reasoning (kept out of
    the text that fine-tuning reads)."""
    extra = {"tool_calls": choice.tool_calls} if choice.tool_calls else {}
    return {**extra, "reasoning": choice.reasoning} if choice.reasoning else extra


def _tool_parse(turn, req, choice) -> None:
    from neural_chat_app.tools import parse_tool_calls

    if turn.kind == "chat" and req.tools and req.tool_choice != "none":
        content, calls = parse_tool_calls(choice.text, req.tool_parameters, req.parallel_tool_calls)
        if calls:
            choice.text, choice.tool_calls = content or "", calls


def _rank_best_of(turn, req) -> list:
    """best_of > n: the n generations of each prompt with the highest total log-probability."""
    if req.generations == req.n:
        return turn.choices
    best = []
    for prompt in sorted({c.prompt for c in turn.choices}):
        mine = [c for c in turn.choices if c.prompt == prompt]
        mine.sort(key=lambda c: sum(t.logprob for t in kept_tokens(c, turn.kind)), reverse=True)
        best += mine[: req.n]
    return best


def response_body(turn, req) -> dict:
    tokenizer = turn.backend.tokenizer
    out = []
    for index, choice in enumerate(_rank_best_of(turn, req)):
        _tool_parse(turn, req, choice)
        if turn.kind == "chat":
            message = {"role": "assistant", "content": None if choice.tool_calls and not choice.text else choice.text}
            if choice.reasoning:
                message["reasoning_content"] = choice.reasoning
            if choice.tool_calls:
                message["tool_calls"] = choice.tool_calls
            logprobs = chat_logprobs(tokenizer, kept_tokens(choice, "chat")) if req.logprobs else None
            out.append({"index": index, "message": message, "finish_reason": _finish(choice), "logprobs": logprobs})
            continue
        text, logprobs = choice.text, None
        echo = choice.echo or ""
        if req.logprobs is not None:
            entries = prompt_offsets(tokenizer, choice) if choice.echo is not None else []
            logprobs = completion_logprobs(tokenizer, entries)
            reply = completion_logprobs(tokenizer, kept_tokens(choice, "completion"), len(echo))
            for key in logprobs:
                logprobs[key] += reply[key]
        out.append({"index": index, "text": echo + text, "finish_reason": _finish(choice), "logprobs": logprobs})
    return {
        "id": turn.id,
        "object": "chat.completion" if turn.kind == "chat" else "text_completion",
        "created": turn.created,
        "model": turn.backend.model_id,
        "choices": out,
        "usage": turn.usage,
    }


class ChunkWriter:
    """The SSE chunks of a streamed Turn. Tool calls: a ToolCallSplitter per choice holds back what may be a
    call and sends it whole at the choice's end. The last choice's finish chunk waits for `closing`, which adds
    the log's ids (and the retrieval sources) once the reply is committed."""

    def __init__(self, turn, req):
        self.turn, self.req = turn, req
        self.chat = turn.kind == "chat"
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        self.head = {"id": turn.id, "object": obj, "created": turn.created, "model": turn.backend.model_id}
        self.tokenizer = turn.backend.tokenizer
        self.sent_chars: dict[int, int] = {}  # characters of each choice's reply sent
        self.sent_tokens: dict[int, int] = {}
        self.splitters: dict[int, object] = {}
        self.deferred: dict | None = None
        uses_tools = self.chat and bool(getattr(req, "tools", None)) and req.tool_choice != "none"
        if uses_tools:
            from neural_chat_app.tools import ToolCallSplitter

            self.splitters = {c.index: ToolCallSplitter(req.tool_parameters, req.parallel_tool_calls)
                              for c in turn.choices}

    def _logprobs_wanted(self) -> bool:
        return bool(self.req.logprobs) if self.chat else self.req.logprobs is not None

    def _chunk(self, choice, text: str | None = None, finish: str | None = None, logprobs=None, delta=None) -> dict:
        if self.chat:
            body = {"index": choice.index, "delta": delta if delta is not None else
                    ({} if text is None else {"content": text}), "finish_reason": finish, "logprobs": logprobs}
        else:
            body = {"index": choice.index, "text": text or "", "finish_reason": finish, "logprobs": logprobs}
        return {**self.head, "choices": [body]}

    def opening(self) -> str:
        if not self.chat:
            return ""
        return "".join(sse(self._chunk(c, delta={"role": "assistant", "content": ""})) for c in self.turn.choices)

    def _new_logprobs(self, choice, final: bool):
        if not self._logprobs_wanted():
            return None
        start = self.sent_tokens.get(choice.index, 0)
        sent = self.sent_chars.get(choice.index, 0)
        entries = choice.result.tokens or []
        if final:
            kept = kept_tokens(choice, self.turn.kind)
            new = kept[start:] if start < len(kept) else []
        else:
            offset = answer_offset(choice)
            new = [t for t in entries if offset <= t.offset < offset + sent][start:]
        self.sent_tokens[choice.index] = start + len(new)
        if self.chat:
            return chat_logprobs(self.tokenizer, new)
        return completion_logprobs(self.tokenizer, new, len(choice.echo or ""))

    def _echo(self, choice) -> list[str]:
        if self.chat or choice.echo is None or choice.index in self.sent_chars:
            return []
        self.sent_chars[choice.index] = 0
        logprobs = None
        if self._logprobs_wanted():
            logprobs = completion_logprobs(self.tokenizer, prompt_offsets(self.tokenizer, choice))
        return [sse(self._chunk(choice, choice.echo, logprobs=logprobs))]

    def text(self, choice, chunk: str) -> list[str]:
        if isinstance(chunk, Thought):  # a thinking model's reasoning, apart from the content
            choice.reasoning += chunk
            return [sse(self._chunk(choice, delta={"reasoning_content": str(chunk)}))]
        events = self._echo(choice)
        choice.text += chunk
        splitter = self.splitters.get(choice.index)
        out = splitter.feed(chunk) if splitter is not None else chunk
        if not out:
            return events
        self.sent_chars[choice.index] = self.sent_chars.get(choice.index, 0) + len(out)
        return [*events, sse(self._chunk(choice, out, logprobs=self._new_logprobs(choice, final=False)))]

    def end(self, choice) -> list[str]:
        events = self._echo(choice)
        splitter = self.splitters.get(choice.index)
        rest, calls = splitter.finish() if splitter is not None else ("", [])
        if calls:
            choice.text, choice.tool_calls = rest, calls
        logprobs = self._new_logprobs(choice, final=True)
        if rest or (logprobs and (logprobs.get("content") or logprobs.get("tokens"))):
            events.append(sse(self._chunk(choice, rest, logprobs=logprobs)))
        if calls:
            delta = {"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]}
            events.append(sse(self._chunk(choice, delta=delta)))
        finish = self._chunk(choice, finish=_finish(choice))
        if choice.index == self.turn.choices[-1].index:
            self.deferred = finish
        else:
            events.append(sse(finish))
        return events

    def closing(self) -> str:
        turn = self.turn
        extra = {"conversation_id": turn.session, "message_id": turn.message_id}
        if turn.links is not None:
            extra["sources"] = turn.links
        final = self.deferred or {**self.head, "choices": []}
        return sse({**final, **extra})

    def partial_text(self) -> str:
        return self.turn.choices[0].text
