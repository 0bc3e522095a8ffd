"""Export the conversation log to the JSONL `messages` format the data pipeline ingests.

One line per conversation: {"messages": [{"role", "content"}, ...], "metadata": {"feedback": ..., ...}}.
`feedback` is the conversation's verdict: -1 if any reply got a thumbs down, 1 if some got a thumbs up and
none down, None if nobody rated it; `turn_feedback` keeps the rating of each assistant reply in order.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path


def _verdict(ratings: list[int | None]) -> int | None:
    if -1 in ratings:
        return -1
    return 1 if 1 in ratings else None


def export_jsonl(db_path: str | Path, out_path: str | Path, min_feedback: int | None = None,
                 since: float | None = None) -> dict:
    """Write one JSON line per conversation that has an assistant reply; return counts for the caller.

    `since` (a Unix time) keeps only conversations with a message logged after it, e.g. since the last
    improvement run."""
    db_path = Path(db_path).expanduser()
    if not db_path.is_file():
        raise FileNotFoundError(f"No conversation log at {db_path}")
    # Read-only: exporting while the server writes is safe in WAL mode.
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    written = skipped = 0
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sessions = db.execute("SELECT id, created_at, model FROM sessions ORDER BY created_at").fetchall()
        with open(out_path, "w", encoding="utf-8") as out:
            for session in sessions:
                rows = db.execute(
                    "SELECT role, content, model, feedback, created_at FROM messages WHERE session_id = ? ORDER BY id",
                    (session["id"],),
                ).fetchall()
                if since is not None and not any(r["created_at"] > since for r in rows):
                    skipped += 1
                    continue
                ratings = [r["feedback"] for r in rows if r["role"] == "assistant"]
                verdict = _verdict(ratings)
                if not ratings or (min_feedback is not None and (verdict is None or verdict < min_feedback)):
                    skipped += 1
                    continue
                record = {
                    "messages": [{"role": r["role"], "content": r["content"]} for r in rows],
                    "metadata": {
                        "feedback": verdict,
                        "turn_feedback": ratings,
                        "session_id": session["id"],
                        "model": next((r["model"] for r in rows if r["model"]), session["model"]),
                        "created_at": session["created_at"],
                    },
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
    finally:
        db.close()
    return {"conversations_written": written, "conversations_skipped": skipped, "output": str(out_path)}
