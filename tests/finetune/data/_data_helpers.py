"""Helpers shared by the data-pipeline tests."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from finetune.data.chatlog_schema import SCHEMA, SCHEMA_VERSION

FIXTURES = Path(__file__).parent / "fixtures"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_chatlog(path: Path, sessions: dict[str, list[tuple]], version: int = SCHEMA_VERSION) -> Path:
    """`sessions`: id -> [(role, content, feedback), ...], written the way the chat app writes them."""
    con = sqlite3.connect(path)
    con.executescript(SCHEMA)
    con.execute("INSERT INTO schema_info VALUES (?)", (version,))
    for n, (sid, messages) in enumerate(sessions.items()):
        con.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (sid, 1000.0 + n, f"title {sid}", "smollm2"))
        for role, content, feedback in messages:
            con.execute("INSERT INTO messages (session_id, role, content, created_at, model, feedback) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (sid, role, content, 1000.0 + n, "smollm2", feedback))
    con.commit()
    con.close()
    return path


def chat(user: str, assistant: str, **metadata) -> dict:
    record = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}
    if metadata:
        record["metadata"] = metadata
    return record


def distinct_chats(n: int, **metadata) -> list[dict]:
    """n conversations that no dedup or repetition filter would touch: each has its own vocabulary."""
    return [chat(f"Question number {i}: what is {i} squared plus {i * 7} {'alpha' * (i % 3)}?",
                 f"Answer {i}: {i * i + i * 7}. Word{i} token{i * 3} item{i * 11} thing{i * 13} stuff{i * 17}.",
                 **metadata) for i in range(n)]
