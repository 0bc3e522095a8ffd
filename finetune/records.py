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


# TRL's preference formats (what data prepared for TRL's DPOTrainer and KTOTrainer holds):
#   {"prompt", "chosen", "rejected"}   a pair: both replies to one prompt, strings or lists of {role, content} messages
#   {"chosen", "rejected"}             a pair with an implicit prompt: two conversations that share their first turns
#   {"prompt", "completion", "label"}  unpaired (kto): one reply, label true when it is good, false when it is bad
PAIR = ("chosen", "rejected")
UNPAIRED = ("prompt", "completion", "label")
LABEL_TEXT = {"true": True, "false": False, "1": True, "0": False}  # a CSV file's labels are text


def preference_label(value) -> bool | None:
    """A KTO label as a bool (JSON's true/false, or a CSV cell's text); None when it is neither."""
    if isinstance(value, bool):
        return value
    return LABEL_TEXT.get(value.strip().lower()) if isinstance(value, str) else None


def required_columns(task: str, columns: set[str], prompt_column=None, response_column=None) -> tuple[str, ...]:
    if task == "dpo" or (task == "kto" and set(PAIR) <= columns):
        return PAIR  # with or without a prompt: each record is checked as the one or the other
    if task == "kto":
        return UNPAIRED
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
    if set(PAIR) <= columns:
        return "dpo"
    if set(UNPAIRED) <= columns:
        return "kto"
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
        elif task in ("dpo", "kto"):
            problems.extend(_check_preference(record, needed))
        elif set(UNPAIRED) <= set(record.data) and preference_label(record.data["label"]) is not None:
            problems.append(f"{record.where}: a prompt/completion/label record is KTO's unpaired preference format: "
                            f"training task={task!r} on it would learn the replies labelled false too")
        elif trl_format(record.data) is not None and task != "summarization":
            problems.extend(_check_trl(record, task))
        elif task in ("chat", "extraction"):
            problems.extend(_check_messages(record, task))
    if task in ("dpo", "kto") and not problems:
        problems = _mixed_styles(records)
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
    tools, problem = tool_definitions(record.data.get("tools"))
    if problem:
        problems.append(f"{record.where}: {problem}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            problems.append(f"{record.where}: messages[{i}] needs role system|user|assistant|tool")
        elif not isinstance(m.get("content"), str) and not (m["role"] == "assistant" and m.get("tool_calls")
                                                             and m.get("content") is None):
            problems.append(f"{record.where}: messages[{i}].content must be a string")
        elif m.get("reasoning_content") is not None and (m["role"] != "assistant"
                                                          or not isinstance(m["reasoning_content"], str)):
            problems.append(f"{record.where}: messages[{i}].reasoning_content (a thinking model's reasoning) must be "
                            f"a string on an assistant message")
        else:
            problems += [f"{record.where}: messages[{i}]{p}" for p in tool_problems(messages, i, tools)]
    if problems:
        return problems
    replies = [m["content"] or "" for m in messages if m["role"] == "assistant"]
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


def tool_definitions(value) -> tuple[list[dict] | None, str]:
    """A record's `tools` (OpenAI's function definitions, as a list or as a JSON string, the form a dataset on the
    hub keeps them in), and what is wrong with them ("" if nothing)."""
    if value is None:
        return None, ""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            return None, f"tools is a string that is not JSON ({e})"
    shape = ('tools must be a list of {"type": "function", "function": {"name": ..., "description": ..., '
             '"parameters": {JSON schema}}}')
    if not isinstance(value, list):
        return None, shape
    for n, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            return None, f"{shape}; tools[{n}] is not"
        if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
            return None, f"tools[{n}].function.parameters must be a JSON schema object"
    return value, ""


def tool_problems(messages: list, i: int, tools: list[dict] | None) -> list[str]:
    """What is wrong with messages[i]'s tool parts: an assistant's `tool_calls` (each a function name and its
    arguments, a JSON object or the string of one, of a function `tools` defines) or a `tool` result (after the
    calls it answers)."""
    m = messages[i]
    if m["role"] == "tool":
        before = next((x for x in reversed(messages[:i]) if isinstance(x, dict) and x.get("role") != "tool"), {})
        return [] if before.get("tool_calls") else [
            " is a tool result with no assistant tool_calls before it: a result answers the calls just before it"]
    if "tool_calls" not in m or m["tool_calls"] is None:
        return []
    if m["role"] != "assistant" or not isinstance(m["tool_calls"], list) or not m["tool_calls"]:
        return [".tool_calls must be a non-empty list, on an assistant message"]
    names = {t["function"]["name"] for t in tools or []}
    problems = []
    for n, call in enumerate(m["tool_calls"]):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            problems.append(f'.tool_calls[{n}] must be {{"type": "function", "function": {{"name": ..., '
                            f'"arguments": {{...}}}}}}')
            continue
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except ValueError:
                arguments = None
        if not isinstance(arguments, dict):
            problems.append(f".tool_calls[{n}].function.arguments must be a JSON object (or the string of one)")
        if tools is not None and function["name"] not in names:
            problems.append(f".tool_calls[{n}] calls {function['name']!r}, which the record's tools do not define "
                            f"({', '.join(sorted(names))})")
    return problems


def _is_messages(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def _check_preference(record: Record, needed: tuple[str, ...]) -> list[str]:
    """A preference record: all strings or all lists of messages; a pair's replies differ; a label is a bool."""
    data, where = record.data, record.where
    replies = ("completion",) if needed == UNPAIRED else PAIR
    if needed == UNPAIRED and preference_label(data["label"]) is None:
        return [f"{where}: 'label' must be true (a good reply) or false (a bad one), got {data['label']!r}"]
    parts = [k for k in ("prompt", *replies) if k in data]
    if all(isinstance(data[k], str) for k in parts):
        empty = [k for k in replies if not data[k].strip()]
        if empty:
            return [f"{where}: {' and '.join(empty)} must not be empty"]
        if replies == PAIR and data["chosen"] == data["rejected"]:
            return [f"{where}: chosen and rejected are the same reply, so there is nothing to prefer: drop the "
                    f"record or write the worse reply into rejected"]
        return []
    if not all(_is_messages(data[k]) or (k == "prompt" and data[k] == []) for k in parts):
        return [f"{where}: {', '.join(parts)} must all be strings or all be lists of {{role, content}} messages"]
    problems = []
    for reply in replies if "prompt" in data else ():  # each reply after the prompt, its calls checked by name
        problems += _check_messages(Record({"messages": data["prompt"] + data[reply], "tools": data.get("tools")},
                                           where), "chat")
    if "prompt" not in data:
        problems = _check_messages(Record({"messages": data["chosen"] + data["rejected"], "tools": data.get("tools")},
                                          where), "chat")
    problems = list(dict.fromkeys(problems))  # the prompt's, once
    if problems and not any("no assistant message" in p for p in problems):
        return problems
    if replies == PAIR and data["chosen"] == data["rejected"]:
        return [f"{where}: chosen and rejected are the same conversation, so there is nothing to prefer"]
    if "prompt" not in data:  # implicit prompt: the turns both conversations share
        shared = next((i for i, (a, b) in enumerate(zip(data["chosen"], data["rejected"])) if a != b),
                      min(len(data["chosen"]), len(data["rejected"])))
        if shared == 0:
            return [f"{where}: chosen and rejected share no first turn, so the prompt cannot be found: add a "
                    f"'prompt' (the conversation before the replies) or start both with the same turns"]
        replies_data = {k: data[k][shared:] for k in PAIR}
    else:
        replies_data = {k: data[k] for k in replies}
    for key, messages in replies_data.items():
        if not messages or messages[0].get("role") != "assistant":
            return [f"{where}: {key} must continue the prompt with an assistant reply (it "
                    f"{'ends with the prompt' if not messages else 'starts with a ' + str(messages[0].get('role'))} "
                    f"message)"]
    return []


def _mixed_styles(records: list[Record]) -> list[str]:
    """TRL formats a preference set as a whole (plain text or chat template): a file must not mix the two."""
    styles = {}
    for record in records:
        value = next(record.data[k] for k in ("chosen", "completion") if k in record.data)
        styles.setdefault(isinstance(value, list), record.where)
    if len(styles) < 2:
        return []
    return [f"{styles[False]} holds plain-text replies but {styles[True]} holds lists of messages: a preference "
            f"file is either all text or all conversations; convert one kind to the other"]
