"""The SQLite schema of the conversation log: written by `neural_chat_app`, read by the data pipeline.

One row per message, committed before the reply is returned; WAL mode so a killed server loses nothing
that was committed. `feedback` is +1 (thumbs up), -1 (thumbs down) or NULL. `metadata` is a JSON object.
"""

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id          TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    title       TEXT,
    model       TEXT
);
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id  TEXT NOT NULL REFERENCES sessions(id),
    role        TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    model       TEXT,
    latency_ms  REAL,
    tokens      INTEGER,
    feedback    INTEGER CHECK (feedback IN (-1, 1)),
    metadata    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages(session_id, id);
CREATE TABLE IF NOT EXISTS schema_info (version INTEGER NOT NULL);
"""
