"""Read training records from .json / .jsonl / .csv files and check them against a task, with errors that name
the file and line and say what to do."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from finetune.errors import UserError

MAX_ERRORS_SHOWN = 10


class DataError(UserError):
    """Bad training data: the message names the file, the line or record, and the fix."""


@dataclass(frozen=True)
class Record:
    data: dict
    where: str  # "file.jsonl:12" or "file.json: record 3"


def read_records(path: str | Path) -> list[Record]:
    path = Path(path)
    if not path.is_file():
        hint = f" (the folder {path.parent} does not exist)" if not path.parent.is_dir() else ""
        raise FileNotFoundError(f"Data file not found: {path}{hint}. Check data_args.train_file / validation_file.")
    if path.suffix == ".csv":
        return _read_csv(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason}). Re-save the file as UTF-8.") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        return _read_json_array(path, text)
    return _read_jsonl(path, text)


def _read_json_array(path: Path, text: str) -> list[Record]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno}).") from None
    records = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{path}: record {i}: expected a JSON object, got {type(item).__name__}.")
        records.append(Record(item, f"{path}: record {i}"))
    return records


def _read_jsonl(path: Path, text: str) -> list[Record]:
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{lineno}: malformed JSON line ({e.msg}, column {e.colno}). Each line of a JSONL file must "
                f"be one complete JSON object; fix or remove that line (the data pipeline, python -m finetune.data, "
                f"moves such lines to a rejects file)."
            ) from None
        if not isinstance(item, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(item).__name__}.")
        records.append(Record(item, f"{path}:{lineno}"))
    return records


def _read_csv(path: Path) -> list[Record]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        return [Record(dict(row), f"{path}:{reader.line_num}") for row in reader]


# --- what each task needs ------------------------------------------------------------------------------------

ALPACA = ("instruction", "output")
SUMMARY_PAIRS = (("article", "highlights"), ("document", "summary"), ("text", "summary"))


def summary_columns(columns: set[str], prompt_column: str | None, response_column: str | None) -> tuple[str, str]:
    if prompt_column or response_column:
        return prompt_column or "article", response_column or "highlights"
    for pair in SUMMARY_PAIRS:
        if set(pair) <= columns:
            return pair
    return SUMMARY_PAIRS[0]


# TRL's SFT dataset formats (what data prepared for TRL's SFTTrainer holds), beside NeuralChat's:
#   {"text": ...}                                 language modeling: every token is learned
#   {"prompt": str, "completion": str}             prompt-completion: only the completion is learned
#   {"prompt": [messages], "completion": [messages]}  conversational prompt-completion, through the chat template
#   {"messages": [...]}                           conversational language modeling: our chat task
PROMPT_COMPLETION = ("prompt", "completion")


def trl_format(data: dict) -> str | None:
    """Which TRL prompt-completion or language-modeling format a record is in, or None (NeuralChat's own)."""
    if "prompt" in data and "completion" in data:
        conversational = isinstance(data["prompt"], list) or isinstance(data["completion"], list)
        return "conversational prompt-completion" if conversational else "prompt-completion"
    if "text" in data and not set(ALPACA) <= set(data) and "messages" not in data:
        return "language modeling"
    return None


def required_columns(task: str, columns: set[str], prompt_column=None, response_column=None) -> tuple[str, ...]:
    if task in ("chat", "extraction"):
        if "messages" not in columns and set(PROMPT_COMPLETION) <= columns:
            return PROMPT_COMPLETION
        return ("messages",)
    if task == "summarization":
        return summary_columns(columns, prompt_column, response_column)
    if set(PROMPT_COMPLETION) <= columns:
        return PROMPT_COMPLETION
    if "text" in columns and not set(ALPACA) <= columns:
        return ("text",)
    return ALPACA


def suggest_task(columns: set[str]) -> str | None:
    if "messages" in columns:
        return "chat"
    if set(ALPACA) <= columns or columns == {"text"}:
        return "completion"
    if any(set(p) <= columns for p in SUMMARY_PAIRS):
        return "summarization"
    return None


def check_records(records: list[Record], task: str, source: str, prompt_column=None, response_column=None) -> None:
    """Raise one DataError listing every record that the task cannot use (up to MAX_ERRORS_SHOWN of them)."""
    if not records:
        raise DataError(f"{source} holds no examples. Add training records or point to another file.")
    columns = set().union(*(r.data.keys() for r in records[:100]))
    needed = required_columns(task, columns, prompt_column, response_column)
    problems = []
    for record in records:
        missing = [c for c in needed if c not in record.data]
        if missing:
            problems.append(
                f"{record.where}: missing {', '.join(missing)}; found columns: {', '.join(sorted(record.data))}"
            )
        elif trl_format(record.data) is not None and task != "summarization":
            problems.extend(_check_trl(record, task))
        elif task in ("chat", "extraction"):
            problems.extend(_check_messages(record, task))
    if problems:
        shown = "\n  ".join(problems[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(problems) - MAX_ERRORS_SHOWN} more" if len(problems) > MAX_ERRORS_SHOWN else ""
        hint = ""
        suggested = suggest_task(columns)
        if suggested and suggested != task:
            hint = f"\nThese records look like task={suggested!r} data: set finetune_args.task={suggested!r}."
        raise DataError(
            f"{len(problems)} of {len(records)} records in {source} cannot be used for task={task!r}, which "
            f"expects columns {', '.join(needed)}:\n  {shown}{more}{hint}"
        )


def _check_trl(record: Record, task: str) -> list[str]:
    data, kind = record.data, trl_format(record.data)
    if kind == "language modeling":
        ok = isinstance(data["text"], str) and data["text"].strip()
        return [] if ok else [f"{record.where}: 'text' must be a non-empty string"]
    if kind == "prompt-completion":
        if task in ("chat", "extraction"):
            return [f"{record.where}: prompt and completion are plain strings, which task={task!r} cannot render "
                    f"as a conversation: set task='completion', or make them lists of {{role, content}} messages"]
        if not all(isinstance(data[k], str) for k in PROMPT_COMPLETION) or not data["completion"]:
            return [f"{record.where}: prompt and completion must be strings (the completion non-empty)"]
        return []
    if not isinstance(data["prompt"], list) or not isinstance(data["completion"], list) or not data["completion"]:
        return [f"{record.where}: conversational prompt and completion must both be lists of {{role, content}} "
                f"messages (the completion non-empty)"]
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in data["completion"]):
        return [f"{record.where}: the completion holds no assistant message, so there is nothing to learn"]
    return _check_messages(Record({"messages": data["prompt"] + data["completion"]}, record.where), task)


def _check_messages(record: Record, task: str) -> list[str]:
    messages = record.data["messages"]
    if not isinstance(messages, list) or not messages:
        return [f"{record.where}: 'messages' must be a non-empty list of {{role, content}} objects"]
    problems = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            problems.append(f"{record.where}: messages[{i}] needs role system|user|assistant")
        elif not isinstance(m.get("content"), str):
            problems.append(f"{record.where}: messages[{i}].content must be a string")
    if problems:
        return problems
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    if not replies:
        return [f"{record.where}: no assistant message, so there is nothing to learn from it"]
    if task == "extraction":
        try:
            parsed = json.loads(replies[-1])
        except json.JSONDecodeError as e:
            return [f"{record.where}: the assistant reply is not valid JSON ({e.msg}); extraction targets must be "
                    f"JSON objects"]
        if not isinstance(parsed, dict):
            return [f"{record.where}: the assistant reply must be a JSON object, got {type(parsed).__name__}"]
    return []
