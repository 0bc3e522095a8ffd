"""Export the conversation log: JSONL `messages` for SFT (the data pipeline ingests it), or preference rows for
TRL's DPO and KTO trainers (`finetune_model(task="dpo"/"kto")` reads them as they are).

messages: one line per conversation: {"messages": [{"role", "content"}, ...], "metadata": {"feedback": ..., ...}},
the kept replies only (a regenerated-away or edited-away reply is not part of the conversation). A reply that
called tools keeps its `tool_calls`, the results come back as `tool` messages before the reply that read them, a
thinking model's reasoning is the reply's `reasoning_content`, and the functions offered are the line's `tools`
(finetune.data.chatlog_schema.logged_conversation): fine-tuning learns the calls and the reasoning as the model
wrote them. `feedback` is the conversation's verdict: -1 if any reply got a thumbs down, 1 if some got a thumbs up
and none down, None if nobody rated it; `turn_feedback` keeps the rating of each kept assistant reply in order.
`cut_disliked` (what the improve loop asks for) ends each conversation before its first thumbs-down reply, so a
disliked reply is never an SFT target, and keeps what came before it.

kto: one line per rated reply, kept or not: {"prompt": [messages before the reply], "completion": [{"role":
"assistant", "content": reply}], "label": true for a thumbs up, false for a thumbs down}.

dpo: one line per replaced reply: {"prompt": [...], "chosen": [the reply kept in its turn], "rejected": [the
regenerated-away or edited-away reply]}. A pair is left out when the ratings contradict it (chosen rated down or
rejected rated up), when both replies are the same text, or when either was cut off (stopped mid-stream).

Every prompt is the conversation as the model saw it before that turn: the kept messages, system prompt included.
As in `messages`, a reply keeps its calls and reasoning, the tool results come before the reply that read them, and
a row holds the functions offered (`tools`): a reply that called a tool is compared by its call, not its empty text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from finetune.data.chatlog_db import connect
from finetune.data.chatlog_schema import logged_conversation, messages_sql
from finetune.data.preference_pairs import preference_rows

FORMATS = ("messages", "kto", "dpo")


def _verdict(ratings: list[int | None]) -> int | None:
    if -1 in ratings:
        return -1
    return 1 if 1 in ratings else None


Row = Sequence  # a row read by position and by column name: sqlite3's, or chatlog_db.Row from PostgreSQL


def _sessions(db_path: str | Path, since: float | None, counts: dict) -> Iterator[tuple[Row, list[Row]]]:
    """(session, every message in conversation order, superseded ones too) of each session with a message logged
    after `since`; the others are counted in counts["conversations_skipped"].
    `db_path`: the SQLite file, or the postgresql:// URL of the log (chat_log.url)."""
    # Read-only: exporting while the server writes is safe in WAL mode; a version-1 file is read as it is.
    db = connect(db_path, read_only=True)
    try:
        query = messages_sql(db, kept_only=False)
        for session in db.execute("SELECT id, created_at, model FROM sessions ORDER BY created_at").fetchall():
            rows = db.execute(query, (session["id"],)).fetchall()
            if since is not None and not any(r["created_at"] > since for r in rows):
                counts["conversations_skipped"] += 1
                continue
            yield session, rows
    finally:
        db.close()


def export_jsonl(db_path: str | Path, out_path: str | Path, min_feedback: int | None = None,
                 since: float | None = None, cut_disliked: bool = False) -> dict:
    """Write one JSON line per conversation that has an assistant reply; return counts for the caller.

    `since` (a Unix time) keeps only conversations with a message logged after it, e.g. since the last
    improvement run. `cut_disliked`: end each conversation before its first thumbs-down reply (module docstring)."""
    counts = {"conversations_written": 0, "conversations_skipped": 0, "output": str(out_path)}
    cut = 0
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as out:
        for session, rows in _sessions(db_path, since, counts):
            rows = [r for r in rows if r["superseded_by"] is None]
            ratings = [r["feedback"] for r in rows if r["role"] == "assistant"]
            verdict = _verdict(ratings)
            if cut_disliked and -1 in ratings:
                first_bad = next(i for i, r in enumerate(rows) if r["role"] == "assistant" and r["feedback"] == -1)
                # back to the user turn that asked for it: the conversation up to the last liked-or-unrated reply
                while first_bad and rows[first_bad - 1]["role"] != "assistant":
                    first_bad -= 1
                rows, cut = rows[:first_bad], cut + 1
                ratings = [r["feedback"] for r in rows if r["role"] == "assistant"]
                verdict = _verdict(ratings)
            if not ratings or (min_feedback is not None and (verdict is None or verdict < min_feedback)):
                counts["conversations_skipped"] += 1
                continue
            messages, tools = logged_conversation(rows)
            record = {
                "messages": messages,
                **({"tools": tools} if tools else {}),
                "metadata": {
                    "feedback": verdict,
                    "turn_feedback": ratings,
                    "session_id": session["id"],
                    "model": next((r["model"] for r in rows if r["model"]), session["model"]),
                    "created_at": session["created_at"],
                },
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            counts["conversations_written"] += 1
    if cut_disliked:
        counts["conversations_cut_at_a_disliked_reply"] = cut
    return counts


def export_preferences(db_path: str | Path, out_path: str | Path, kind: Literal["kto", "dpo"],
                       since: float | None = None) -> dict:
    """Write the log's KTO or DPO rows (module docstring), one JSON line each; return counts for the caller."""
    if kind not in ("kto", "dpo"):
        raise ValueError(f"export kind must be 'kto' or 'dpo', got {kind!r}")
    written = conversations = left_out = 0
    skipped = {"conversations_skipped": 0}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as out:
        for _, rows in _sessions(db_path, since, skipped):
            found, dropped = preference_rows(rows, kind)
            left_out += dropped
            conversations += bool(found)
            for row in found:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            written += len(found)
    noun = "pairs" if kind == "dpo" else "rated_replies"
    counts = {f"{noun}_written": written, "conversations_with_them": conversations, **skipped,
              "output": str(out_path)}
    if kind == "dpo":
        counts["pairs_left_out"] = left_out  # contradicting ratings, the same text twice, or a cut-off reply
    return counts
