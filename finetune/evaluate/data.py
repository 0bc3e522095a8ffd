"""Held-out examples for evaluation: prompt messages (or text) plus the reference reply, checked against the task."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from finetune.errors import UserError
from finetune.extraction import FEW_SHOT, to_json
from finetune.formatting import SUMMARIZATION_PROMPT, completion_prompt
from finetune.records import (
    DataError,
    Record,
    check_records,
    read_records,
    summary_columns,
    tool_definitions,
    trl_format,
)
from finetune.tool_calls import call_body


class EvalError(UserError):
    """Evaluation cannot run as asked: the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Example:
    record: dict  # the original record (for perplexity: formatted and masked as in training)
    messages: list[dict] | None  # chat/extraction: the conversation before the reference reply
    prompt: str | None  # completion/summarization/code-generation: the prompt text
    reference: str
    where: str
    tools: list[dict] | None = None  # the functions the conversation offers (OpenAI's definitions)
    reference_calls: list[dict] | None = None  # the reference reply's tool calls, {"name", "arguments"} each

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools or self.reference_calls)

    @property
    def offered(self) -> dict[str, dict]:
        """The functions a reply may call, name -> parameters schema (which types Qwen 3.5's text values)."""
        offered = {t["function"]["name"]: t["function"].get("parameters") or {} for t in self.tools or []}
        return {**{c["name"]: {} for c in self.reference_calls or []}, **offered}


def load_examples(path: str | Path, task: str, max_examples: int | None = None) -> list[Example]:
    """Read an eval file, check every record fits `task`, and return up to `max_examples` examples."""
    return examples_from_records(read_records(path), task, str(path), max_examples)


def examples_from_records(records: list[Record], task: str, source: str,
                          max_examples: int | None = None) -> list[Example]:
    if not records:
        raise EvalError(f"{source} holds no examples: an empty eval set cannot be scored. Point --data at a "
                        f"file with held-out records (or set validation_file / validation_split_percentage).")
    try:
        check_records(records, task, source)
    except DataError as err:
        raise EvalError(f"Cannot evaluate task={task!r} on {source}: {err}") from None
    records = records[:max_examples] if max_examples else records
    return [_example(r, task) for r in records]


def _example(record: Record, task: str) -> Example:
    data = record.data
    kind = trl_format(data) if task != "summarization" else None
    if kind == "language modeling":
        raise EvalError(f"{record.where}: a language-modeling record ({{'text': ...}}) has no reference reply to "
                        f"score: hold out prompt/completion or messages records instead")
    if kind == "prompt-completion":
        return Example(data, None, data["prompt"], data["completion"], record.where)
    if task in ("chat", "extraction") or kind == "conversational prompt-completion":
        # a conversational prompt-completion record: its last reply is asked after everything before it, the
        # completion's calls and results included, as for a messages record
        messages = data["prompt"] + data["completion"] if kind == "conversational prompt-completion" \
            else data["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        reference = messages[last]["content"] or ""
        if task == "extraction":
            reference = to_json(json.loads(reference))  # one serialization for every reference
        calls = [call_body(c) for c in messages[last].get("tool_calls") or []]
        return Example(data, messages[:last], None, reference, record.where, tool_definitions(data.get("tools"))[0],
                       calls or None)
    if task == "summarization":
        source, target = summary_columns(set(data), None, None)
        return Example(data, None, SUMMARIZATION_PROMPT.format(article=str(data[source])), str(data[target]),
                       record.where)
    return Example(data, None, completion_prompt(str(data["instruction"]), str(data.get("input") or "")),
                   str(data["output"]), record.where)


def with_few_shot(messages: list[dict], few_shot: int) -> list[dict]:
    """Insert `few_shot` worked extraction examples after the system message (the same for every model)."""
    if few_shot <= 0:
        return messages
    if few_shot > len(FEW_SHOT):
        raise EvalError(f"few_shot={few_shot}: only {len(FEW_SHOT)} few-shot examples exist")
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    shots = []
    for text, answer in FEW_SHOT[:few_shot]:
        shots += [{"role": "user", "content": text}, {"role": "assistant", "content": to_json(answer)}]
    return [*head, *shots, *messages[len(head):]]
