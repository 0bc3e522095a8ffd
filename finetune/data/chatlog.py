"""Read the chat app's conversation log (schema in `chatlog_schema.py`): one conversation per session, from its
SQLite file or its PostgreSQL database (a postgresql:// URL; `chatlog_db`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from finetune.data.chatlog_db import LogDB, connect, describe
from finetune.data.chatlog_schema import SCHEMA_VERSION, logged_conversation, messages_sql
from finetune.data.records import ROLES, Conversation, Reject, SourceError

SQLITE_MAGIC = b"SQLite format 3\x00"

_BAD_BYTES = re.compile("[\udc80-\udcff]")  # what surrogateescape made of bytes that were not UTF-8
# of the kept messages: a reply the user replaced is not trained on
_COLUMNS = ("role", "content", "model", "feedback", "metadata")


def read_chatlog(path: Path | str) -> Iterator[Conversation | Reject]:
    # Read-only, so reading a log that the server is writing (WAL mode) never blocks or changes it.
    con = connect(path, read_only=True)
    path = describe(path)  # the origin of each record: a URL without its password
    if con.dialect == "sqlite":
        # Invalid UTF-8 in one message must reject that session, not stop the run: keep the bad bytes as surrogates
        # (PostgreSQL stores valid UTF-8 only).
        con.connection.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
    try:
        _check_schema(con, path)
        sessions = con.execute("SELECT id, title, model, created_at FROM sessions ORDER BY created_at, id").fetchall()
        # Messages whose session row is missing are still conversations; reading them keeps the count honest.
        orphans = con.execute(
            "SELECT DISTINCT session_id FROM messages WHERE session_id NOT IN (SELECT id FROM sessions) ORDER BY 1"
        ).fetchall()
        for session in sessions + [(o[0], None, None, None) for o in orphans]:
            yield _session(con, path, *session)
    finally:
        con.close()


def _check_schema(con: LogDB, path: str) -> None:
    tables = con.tables()
    missing = {"sessions", "messages"} - tables
    if missing:
        kind = "an SQLite file" if con.dialect == "sqlite" else "a PostgreSQL database"
        raise SourceError(f"{path}: {kind} without the conversation-log tables {sorted(missing)}; "
                         "only the chat app's log (finetune/data/chatlog_schema.py) can be ingested")
    if "schema_info" in tables:
        row = con.execute("SELECT max(version) FROM schema_info").fetchone()
        if row and row[0] is not None and row[0] > SCHEMA_VERSION:
            raise SourceError(f"{path}: conversation log schema version {row[0]} is newer than this reader "
                             f"({SCHEMA_VERSION}); upgrade the package")


def _session(con: LogDB, path: str, session_id: str, title, model, created_at) -> Conversation | Reject:
    origin = f"{path}#session={session_id}"
    rows = con.execute(messages_sql(con, columns=_COLUMNS), (session_id,)).fetchall()
    raw = {"session_id": session_id, "title": title, "model": model,
           "messages": [{"role": r[0], "content": r[1]} for r in rows]}
    if not rows:
        return Reject("ingest", "empty_session", "session has no messages", origin, raw)
    for i, (role, content, *_) in enumerate(rows):
        if isinstance(content, str) and _BAD_BYTES.search(content):
            return Reject("ingest", "invalid_utf8", f"message {i}: content is not valid UTF-8", origin, raw)
        # SQLite is dynamically typed: a TEXT column can still hold a number or BLOB written by other code.
        if role not in ROLES or not isinstance(content, str):
            return Reject("ingest", "wrong_type", f"message {i}: role {role!r} / content of type "
                          f"{type(content).__name__}", origin, raw)
    ratings = [r[3] for r in rows if r[0] == "assistant"]
    # The same metadata as neural_chat_app's export-log JSONL, so one predicate works on either source.
    meta = {
        "feedback": -1 if -1 in ratings else (1 if 1 in ratings else None),
        "turn_feedback": ratings,
        "session_id": session_id,
        "model": next((r[2] for r in rows if r[2]), model),
        "created_at": created_at,
        "title": title,
    }
    messages, tools = logged_conversation(rows)
    return Conversation(messages=messages, metadata=meta, origin=origin, format="chatlog", raw=raw, tools=tools)

