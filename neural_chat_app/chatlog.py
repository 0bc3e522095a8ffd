"""The conversation log: one SQLite row per message, committed before the reply completes.

WAL mode with synchronous=FULL: a committed message survives a kill -9 of the server (and a power cut), and
readers (the web page, `export-log`) never block the writer. The schema belongs to the data pipeline
(finetune.data.chatlog_schema), which reads this file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from finetune.data.chatlog_schema import SCHEMA, SCHEMA_VERSION


class ChatLog:
    """A thread-safe handle on one log file. Every write is its own committed transaction."""

    def __init__(self, path: str | Path, redact: list[str] | tuple = (), phone_region: str = "US"):
        self.path = Path(path).expanduser()
        # PII kinds (email, url, ip, card, phone) replaced by placeholders before anything is stored.
        self.redact_kinds = list(redact)
        self.phone_region = phone_region
        if self.redact_kinds:
            from finetune.data.redact import ORDER

            unknown = set(self.redact_kinds) - set(ORDER)
            if unknown:
                raise ValueError(f"chat_log.redact: unknown kinds {sorted(unknown)}; known: {list(ORDER)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._db.executescript(SCHEMA)
            found = self._db.execute("SELECT version FROM schema_info").fetchone()
            if found is None:
                self._db.execute("INSERT INTO schema_info (version) VALUES (?)", (SCHEMA_VERSION,))
            elif found["version"] != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has conversation-log schema version {found['version']}, this code writes "
                    f"{SCHEMA_VERSION}: use a new log file or migrate it"
                )

    def has_session(self, session_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is not None

    def ensure_session(self, session_id: str, model: str | None = None, title: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO sessions (id, created_at, title, model) VALUES (?, ?, ?, ?)",
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
    ) -> int:
        content = self._redact(content)
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO messages (session_id, role, content, created_at, model, latency_ms, tokens, metadata) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, role, content, time.time(), model, latency_ms, tokens, json.dumps(metadata or {})),
            )
            return int(cursor.lastrowid)

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
        with self._lock:
            rows = self._db.execute(
                "SELECT id, role, content, created_at, model, latency_ms, tokens, feedback, metadata "
                "FROM messages WHERE session_id = ? ORDER BY id",
                (session_id,),
            ).fetchall()
        return [{**dict(r), "metadata": json.loads(r["metadata"])} for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
