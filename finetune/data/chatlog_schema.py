"""The schema of the conversation log: written by `neural_chat_app`, read by the data pipeline.

Written in SQLite's SQL; `chatlog_db` runs it on PostgreSQL too (the few differences are there).

One row per message, committed before the reply is returned; WAL mode so a killed server loses nothing
that was committed. `feedback` is +1 (thumbs up), -1 (thumbs down) or NULL. `metadata` is a JSON object.

Version 2 keeps every reply the user replaced. A regenerated reply, or a reply the user edited (`edited` = 1,
the user's own text), is a new row whose `alternative_of` is the turn's first reply; the replies of one turn
are that first reply and every row pointing to it. Exactly one of them is kept (`superseded_by` NULL): the
conversation the model sees and the page shows is the kept rows, in turn order (`CONVERSATION_ORDER`). The
others name the reply kept in their place, which makes (kept, superseded) the (chosen, rejected) pair of DPO.
A version-1 file is migrated in place by the writer (`MIGRATIONS`); readers take either version
(`messages_sql`).
"""

from __future__ import annotations

import json
from typing import Any

from finetune.data.chatlog_db import LogDB

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id          TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    title       TEXT,
    model       TEXT
);
CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id      TEXT NOT NULL REFERENCES sessions(id),
    role            TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content         TEXT NOT NULL,
    created_at      REAL NOT NULL,
    model           TEXT,
    latency_ms      REAL,
    tokens          INTEGER,
    feedback        INTEGER CHECK (feedback IN (-1, 1)),
    metadata        TEXT NOT NULL DEFAULT '{}',
    alternative_of  INTEGER REFERENCES messages(id),
    superseded_by   INTEGER REFERENCES messages(id),
    edited          INTEGER NOT NULL DEFAULT 0 CHECK (edited IN (0, 1))
);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages(session_id, id);
CREATE INDEX IF NOT EXISTS messages_by_turn ON messages(alternative_of);
CREATE TABLE IF NOT EXISTS schema_info (version INTEGER NOT NULL);
"""

# version -> the statements that take a file of that version to the next one (run in one transaction).
MIGRATIONS: dict[int, list[str]] = {
    1: [
        "ALTER TABLE messages ADD COLUMN alternative_of INTEGER REFERENCES messages(id)",
        "ALTER TABLE messages ADD COLUMN superseded_by INTEGER REFERENCES messages(id)",
        "ALTER TABLE messages ADD COLUMN edited INTEGER NOT NULL DEFAULT 0 CHECK (edited IN (0, 1))",
        "CREATE INDEX IF NOT EXISTS messages_by_turn ON messages(alternative_of)",
        "UPDATE schema_info SET version = 2",
    ],
}

# A turn's replies share its first reply's place, whatever their ids: an edit made later stays in that place.
CONVERSATION_ORDER = "COALESCE(alternative_of, id), id"
MESSAGE_COLUMNS = ("id", "session_id", "role", "content", "created_at", "model", "latency_ms", "tokens", "feedback",
                   "metadata", "alternative_of", "superseded_by", "edited")
_ADDED_IN_V2 = {"alternative_of": "NULL", "superseded_by": "NULL", "edited": "0"}


def messages_sql(db: LogDB, kept_only: bool = True, columns: tuple[str, ...] = MESSAGE_COLUMNS) -> str:
    """The SELECT of one session's messages (its one parameter: the session id), in conversation order, from a log
    of either version: `columns` (of MESSAGE_COLUMNS), with a version-1 file's replies all kept. `kept_only`: the
    conversation as the model sees it; else every reply, superseded ones included."""
    present = db.columns("messages")
    columns = ", ".join(c if c in present or c not in _ADDED_IN_V2 else f"{_ADDED_IN_V2[c]} AS {c}"
                        for c in columns)
    if "superseded_by" not in present:
        return f"SELECT {columns} FROM messages WHERE session_id = ? ORDER BY id"
    kept = " AND superseded_by IS NULL" if kept_only else ""
    return f"SELECT {columns} FROM messages WHERE session_id = ?{kept} ORDER BY {CONVERSATION_ORDER}"


def row_metadata(value: Any) -> dict:
    """A row's metadata: JSON text in SQLite, a JSON value already in PostgreSQL."""
    value = value or "{}"
    try:
        value = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def logged_message(row) -> tuple[list[dict], dict, list[dict]]:
    """(the `tool` results the reply read, the message, the functions offered to it) of one logged row (role,
    content and metadata by name). The log's roles are the chat's three; the server keeps the rest in a reply's
    metadata: its `tool_calls`, the results it read (`tool_results`), a thinking model's `reasoning` (as
    `reasoning_content`) and the `tools` offered."""
    meta = row_metadata(row["metadata"])
    results = []
    if row["role"] == "assistant":
        for result in meta.get("tool_results") or []:
            content = result.get("content")
            results.append({"role": "tool", "tool_call_id": result.get("tool_call_id"),
                            "content": content if isinstance(content, str) else json.dumps(content)})
    message = {"role": row["role"], "content": row["content"]}
    if meta.get("tool_calls"):
        message["tool_calls"] = meta["tool_calls"]
    if row["role"] == "assistant" and isinstance(meta.get("reasoning"), str) and meta["reasoning"].strip():
        message["reasoning_content"] = meta["reasoning"]
    tools = [t for t in meta.get("tools") or [] if isinstance(t, dict) and (t.get("function") or {}).get("name")]
    return results, message, tools


def answered(messages: list[dict]) -> bool:
    """Whether tool results may follow: the conversation ends with calls, or with results of them."""
    return bool(messages) and bool(messages[-1].get("tool_calls") or messages[-1]["role"] == "tool")


def logged_conversation(rows: list) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) of a conversation's kept rows, as training reads it (logged_message): the results go in as
    `tool` messages before the reply that read them, and the tools are the latest definition of each offered."""
    messages: list[dict] = []
    tools: dict[str, dict] = {}
    for row in rows:
        results, message, offered = logged_message(row)
        if answered(messages):
            messages += results
        messages.append(message)
        tools.update((t["function"]["name"], t) for t in offered)
    return messages, list(tools.values()) or None
