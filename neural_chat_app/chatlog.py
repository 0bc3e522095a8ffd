"""The conversation log: one row per message, committed before the reply completes, in an SQLite file (the
default) or a PostgreSQL database that replicas behind a balancer share (`chat_log.url`; finetune.data.chatlog_db
holds what differs between the two).

SQLite in WAL mode with synchronous=FULL, or PostgreSQL's commit: a committed message survives a kill -9 of the
server (and a power cut), and readers (the web page, `export-log`) never block the writer. The schema belongs to
the data pipeline (finetune.data.chatlog_schema), which reads this log. A regenerated or edited reply is a new
row that takes the place of the one it replaces, which stays in the log as superseded (the schema module says
how); a log of an older schema version is migrated in place when it is opened.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from finetune.data.chatlog_db import connect, describe, is_postgres
from finetune.data.chatlog_schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, messages_sql


class ChatLog:
    """A thread-safe handle on one log: an SQLite file path or a postgresql:// URL. Every write is its own committed
    transaction."""

    def __init__(self, path: str | Path, redact: list[str] | tuple = (), phone_region: str = "US"):
        self.path = path if is_postgres(path) else Path(path).expanduser()
        # PII kinds (email, url, ip, card, phone) replaced by placeholders before anything is stored.
        self.redact_kinds = list(redact)
        self.phone_region = phone_region
        if self.redact_kinds:
            from finetune.data.redact import ORDER

            unknown = set(self.redact_kinds) - set(ORDER)
            if unknown:
                raise ValueError(f"chat_log.redact: unknown kinds {sorted(unknown)}; known: {list(ORDER)}")
        self._lock = threading.Lock()
        self._db = connect(self.path)
        # one writer at a time: replicas sharing a PostgreSQL log start together
        with self._lock, self._db.write_transaction():
            self._migrate()
            self._db.create(SCHEMA)
            found = self._db.execute("SELECT version FROM schema_info").fetchone()
            if found is None:
                self._db.execute("INSERT INTO schema_info (version) VALUES (?)", (SCHEMA_VERSION,))
            elif found["version"] != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{describe(self.path)} has conversation-log schema version {found['version']}, this code writes "
                    f"{SCHEMA_VERSION}: upgrade the package, or use a new log"
                )

    def _migrate(self) -> None:
        """Bring an older log to SCHEMA_VERSION in place, in the caller's transaction (a kill leaves a log of
        the old version or the new one, never half of one)."""
        if "schema_info" not in self._db.tables():
            return  # a new log
        while True:
            found = self._db.execute("SELECT version FROM schema_info").fetchone()
            if found is None or found["version"] not in MIGRATIONS:
                return
            for statement in MIGRATIONS[found["version"]]:
                self._db.execute(statement)

    def has_session(self, session_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is not None

    def ensure_session(self, session_id: str, model: str | None = None, title: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO sessions (id, created_at, title, model) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (session_id, time.time(), self._redact(title or "")[:80] or None, model),
            )

    def add_message(
        self,
        session_id: str,
        role: str,
        content: str,
        model: str | None = None,
        latency_ms: float | None = None,
        tokens: int | None = None,
        metadata: dict | None = None,
        replaces: int | None = None,
        edited: bool = False,
    ) -> int:
        """Commit one message; return its id. `replaces`: an assistant reply of this session that this one
        (regenerated, or `edited` by the user) takes the place of; every reply of that turn becomes superseded."""
        content = self._redact(content)
        with self._lock:
            if replaces is None:
                return self._db.insert(
                    "INSERT INTO messages (session_id, role, content, created_at, model, latency_ms, tokens, metadata, "
                    "edited) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (session_id, role, content, time.time(), model, latency_ms, tokens, json.dumps(metadata or {}),
                     int(edited)),
                )
            with self._db.write_transaction():
                turn = self._turn(session_id, replaces)
                new = self._db.insert(
                    "INSERT INTO messages (session_id, role, content, created_at, model, latency_ms, tokens, metadata, "
                    "edited, alternative_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (session_id, role, content, time.time(), model, latency_ms, tokens, json.dumps(metadata or {}),
                     int(edited), turn),
                )
                self._keep(turn, new)
            return new

    def _turn(self, session_id: str | None, message_id: int) -> int:
        """The first reply of the turn of assistant reply `message_id` (of `session_id`, when given)."""
        row = self._db.execute("SELECT session_id, role, COALESCE(alternative_of, id) AS turn FROM messages "
                               "WHERE id = ?", (message_id,)).fetchone()
        if row is None or row["role"] != "assistant" or session_id not in (None, row["session_id"]):
            raise LookupError(f"No assistant reply with id {message_id}"
                              + (f" in conversation {session_id!r}" if session_id else ""))
        return int(row["turn"])

    def _keep(self, turn: int, kept: int) -> None:
        self._db.execute("UPDATE messages SET superseded_by = CASE WHEN id = ? THEN NULL ELSE ? END "
                         "WHERE id = ? OR alternative_of = ?", (kept, kept, turn, turn))

    def edit_reply(self, message_id: int, content: str) -> int:
        """The user's own text in place of assistant reply `message_id`: logged as the kept reply, the original
        stays as superseded. Returns the new reply's id; LookupError if there is no such reply."""
        with self._lock:
            row = self._db.execute("SELECT session_id, model FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise LookupError(f"No assistant reply with id {message_id}")
        return self.add_message(row["session_id"], "assistant", content, row["model"],
                                metadata={"endpoint": "edit"}, replaces=message_id, edited=True)

    def keep_reply(self, message_id: int) -> list[int]:
        """Make reply `message_id` the kept one of its turn (the page flips between a turn's replies); return the
        ids of the turn's replies. LookupError if there is no such reply."""
        with self._lock:
            with self._db.write_transaction():
                turn = self._turn(None, message_id)
                self._keep(turn, message_id)
            rows = self._db.execute("SELECT id FROM messages WHERE id = ? OR alternative_of = ? ORDER BY id",
                                    (turn, turn)).fetchall()
        return [r["id"] for r in rows]

    def replaceable(self, session_id: str, message_id: int) -> str | None:
        """Why reply `message_id` cannot be regenerated now (None: it can): it must be the conversation's last
        kept message and come from the assistant."""
        messages = self.messages(session_id)
        if not any(m["id"] == message_id and m["role"] == "assistant" for m in messages):
            return f"No kept assistant reply with id {message_id} in conversation {session_id!r}"
        if messages[-1]["id"] != message_id:
            return (f"Reply {message_id} is not the last message of conversation {session_id!r}: only the last "
                    "reply can be regenerated")
        return None

    def _redact(self, text: str) -> str:
        if not self.redact_kinds:
            return text
        from collections import Counter

        from finetune.data.redact import redact

        return redact(text, self.redact_kinds, self.phone_region, Counter())

    def set_feedback(self, message_id: int, feedback: int | None) -> bool:
        """Thumbs up (+1), down (-1) or cleared (None) on an assistant message; False if there is none."""
        if feedback not in (1, -1, None):
            raise ValueError(f"feedback must be 1, -1 or null, got {feedback!r}")
        with self._lock:
            cursor = self._db.execute(
                "UPDATE messages SET feedback = ? WHERE id = ? AND role = 'assistant'", (feedback, message_id)
            )
            return cursor.rowcount == 1

    def sessions(self, limit: int = 100) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT s.id, s.created_at, s.title, s.model, COUNT(m.id) AS messages, "
                "COALESCE(MAX(m.created_at), s.created_at) AS updated_at FROM sessions s "
                "LEFT JOIN messages m ON m.session_id = s.id GROUP BY s.id ORDER BY updated_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [dict(r) for r in rows]

    def messages(self, session_id: str) -> list[dict]:
        """The conversation as the model sees it: the kept messages in order. A reply whose turn has several
        (regenerated or edited) lists their ids, oldest first, in `alternatives`."""
        with self._lock:
            rows = self._db.execute(messages_sql(self._db, kept_only=False), (session_id,)).fetchall()
        turns: dict[int, list[int]] = {}
        for r in rows:
            turns.setdefault(r["alternative_of"] or r["id"], []).append(r["id"])
        kept = []
        for r in rows:
            if r["superseded_by"] is None:
                turn = turns[r["alternative_of"] or r["id"]]
                kept.append({**dict(r), "metadata": json.loads(r["metadata"]), "edited": bool(r["edited"]),
                             "alternatives": sorted(turn) if len(turn) > 1 else []})
        return kept

    def close(self) -> None:
        with self._lock:
            self._db.close()
