"""Local text for calibration and evaluation: `messages` JSONL, JSONL with a "text" field, or plain text.

Nothing is downloaded. Chat records are rendered with the model's chat template, so calibration sees the
same token patterns the served model sees. Every set of texts has a SHA-256 recorded in quantization.json.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from finetune.tool_calls import rendered_conversation


def default_eval_texts() -> list[str]:
    from quantize._eval_text import EVAL_PARAGRAPHS

    return list(EVAL_PARAGRAPHS)


def _render(record: dict, tokenizer) -> str | None:
    messages = record.get("messages")
    if isinstance(messages, list) and messages:
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            tools = record.get("tools")
            return rendered_conversation(tokenizer, messages, json.loads(tools) if isinstance(tools, str) else tools)
        return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in messages)
    for key in ("text", "content", "prompt"):
        if isinstance(record.get(key), str):
            return record[key]
    return None


def read_texts(path: str | Path, tokenizer=None, limit: int | None = None) -> list[str]:
    """Texts from `path`: one per JSONL record, or one per blank-line-separated paragraph of a text file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such calibration/evaluation file: {path}")
    raw = path.read_text(encoding="utf-8")
    texts: list[str] = []
    if path.suffix in (".jsonl", ".json"):
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
            text = _render(record, tokenizer) if isinstance(record, dict) else None
            if text is None:
                raise ValueError(f"{path}:{number}: expected a 'messages' list or a 'text' string")
            texts.append(text)
    else:
        texts = [p.strip() for p in raw.split("\n\n") if p.strip()]
    if not texts:
        raise ValueError(f"{path} holds no text")
    return texts[:limit] if limit else texts


def texts_sha256(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def token_batches(texts: list[str], tokenizer, seq_len: int) -> list:
    """One [1, n<=seq_len] LongTensor per text (empty texts skipped)."""
    out = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=seq_len).input_ids
        if ids.shape[1] > 1:
            out.append(ids)
    return out
