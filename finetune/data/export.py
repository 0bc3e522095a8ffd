"""The export stage: turn a kept conversation into training examples in the chosen format and write them.

`messages` JSONL is what `finetune_model`'s chat task reads; `chatml` is `{"text": ...}` JSONL for the
completion task; `alpaca` is a JSON array of instruction/input/output; `instruction` is instruction/context/
response JSONL. Alpaca and instruction have no turns, so the turns before the answered question become
the input/context. `preference` is TRL's own layout, which `finetune_model(task="dpo"/"kto")`, `python -m
finetune.evaluate --task dpo|kto` and TRL's trainers read unchanged: `{"prompt", "chosen", "rejected"}` or
`{"prompt", "completion", "label"}`, lists of messages or plain strings as the input was (an implicit prompt is
written out explicitly, as TRL's `extract_prompt` would make it).

The workers render each conversation's examples to bytes (`render_lines`, one JSON document and a newline per
example); the parent only routes those bytes to a split's file (`SplitWriter.write_rendered`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from finetune.data.records import Preference
from finetune.records import PAIR

EXTENSIONS = {"messages": "jsonl", "chatml": "jsonl", "alpaca": "json", "instruction": "jsonl", "preference": "jsonl"}


def examples(messages: list[dict[str, str]], multi_turn: str) -> Iterator[tuple[int, list[dict[str, str]]]]:
    """`(turn, messages)`: the whole conversation, or one prefix per assistant turn, each ending on that turn."""
    if multi_turn == "conversation":
        yield sum(m["role"] == "assistant" for m in messages), messages
        return
    turn = 0
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            turn += 1
            yield turn, messages[: i + 1]


def chatml(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def _last_exchange(messages: list[dict[str, str]]) -> tuple[str, str, str]:
    """(history, question, answer) for formats that hold one question: the last user turn and the reply."""
    answer = messages[-1]["content"]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    history = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages[:last_user])
    return history, messages[last_user]["content"], answer


def render(messages: list[dict[str, str]], metadata: dict[str, Any] | None, fmt: str,
           tools: list[dict] | None = None) -> dict[str, Any]:
    if fmt == "messages":
        out = {"messages": messages, **({"tools": tools} if tools else {})}
        return out if metadata is None else {**out, "metadata": metadata}
    if fmt == "chatml":
        return {"text": chatml(messages)}
    history, question, answer = _last_exchange(messages)
    if fmt == "alpaca":
        return {"instruction": question, "input": history, "output": answer}
    return {"instruction": question, "context": history, "response": answer}


def example_metadata(metadata: dict[str, Any], origin: str, turn: int, multi_turn: str) -> dict[str, Any]:
    meta = dict(metadata)
    meta.setdefault("origin", origin)
    if multi_turn == "per_turn":
        meta["turn"] = turn
    return meta


def _encode(example: dict[str, Any]) -> bytes:
    # backslashreplace: a lone surrogate in some metadata is written as its JSON escape, never a crash.
    return json.dumps(example, ensure_ascii=False).encode("utf-8", "backslashreplace")


def render_lines(messages: list[dict[str, str]], metadata: dict[str, Any], origin: str, fmt: str,
                 multi_turn: str, keep_metadata: bool, tools: list[dict] | None = None) -> bytes:
    """Every example of one conversation, each a JSON document and a newline, as the split file will hold it."""
    out = []
    for turn, prefix in examples(messages, multi_turn):
        meta = example_metadata(metadata, origin, turn, multi_turn) if keep_metadata else None
        out.append(_encode(render(prefix, meta, fmt, tools)) + b"\n")
    return b"".join(out)


def preference_layout(pref: Preference, task: str) -> str:
    """dpo or kto: the rows a record is written as. `task` is export.preference_task; with kto a pair is written
    as two unpaired examples, with auto each record as it was read."""
    return "kto" if task == "kto" or pref.label is not None else "dpo"


def render_preference(pref: Preference, task: str, keep_metadata: bool) -> bytes:
    """A preference record as the lines of its split file (two for a pair written as KTO examples)."""
    def text(messages: list[dict[str, str]]):
        return messages[0]["content"] if pref.plain else messages  # plain: one message each (formats._plain_parts)

    prompt = text(pref.prompt)
    if preference_layout(pref, task) == "dpo":
        rows = [{"prompt": prompt, "chosen": text(pref.replies["chosen"]), "rejected": text(pref.replies["rejected"])}]
    elif pref.label is None:  # a pair as KTO examples, as finetune.preference.kto_rows unpairs one
        rows = [{"prompt": prompt, "completion": text(pref.replies[k]), "label": k == "chosen"} for k in PAIR]
    else:
        rows = [{"prompt": prompt, "completion": text(pref.replies["completion"]), "label": pref.label}]
    if pref.tools:
        rows = [{**row, "tools": pref.tools} for row in rows]
    if keep_metadata:
        meta = {**pref.metadata, "origin": pref.metadata.get("origin", pref.origin)}
        rows = [{**row, "metadata": meta} for row in rows]
    return b"".join(_encode(row) + b"\n" for row in rows)


class SplitWriter:
    """One output file; a JSON array for Alpaca (written element by element), JSON Lines otherwise."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.array, self.count = path, fmt == "alpaca", 0
        self.f: IO[bytes] = open(path, "wb")
        if self.array:
            self.f.write(b"[")

    def write(self, example: dict[str, Any]) -> None:
        self.write_rendered(_encode(example) + b"\n")

    def write_rendered(self, lines: bytes) -> int:
        """Write examples rendered by `render_lines`; returns how many."""
        n = lines.count(b"\n")
        if self.array:
            for line in lines.split(b"\n")[:-1]:  # json.dumps escapes every newline inside a document
                self.f.write((b"\n" if self.count == 0 else b",\n") + line)
                self.count += 1
        else:
            self.f.write(lines)
            self.count += n
        return n

    def close(self) -> None:
        if self.array:
            self.f.write(b"\n]\n")
        self.f.close()
