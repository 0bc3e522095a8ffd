"""The conversation log: rows written before the reply ends, feedback, JSONL export, and a kill -9 survival test.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/neural_chat_app/test_chatlog.py
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from neural_chat_app.chatlog import ChatLog
from neural_chat_app.export_log import export_jsonl

REPO = Path(__file__).resolve().parents[2]


def test_log_roundtrip_feedback_and_export(tmp_path):
    log = ChatLog(tmp_path / "log.sqlite")
    log.ensure_session("s1", "tiny", "hello")
    log.add_message("s1", "user", "hello", "tiny")
    reply = log.add_message("s1", "assistant", "hi there", "tiny", latency_ms=12.0, tokens=3)
    assert log.set_feedback(reply, -1)
    assert not log.set_feedback(reply + 100, 1)
    with pytest.raises(ValueError, match="feedback"):
        log.set_feedback(reply, 5)
    log.ensure_session("s2", "tiny", "unanswered")
    log.add_message("s2", "user", "nobody answered", "tiny")
    assert [m["role"] for m in log.messages("s1")] == ["user", "assistant"]
    log.close()

    stats = export_jsonl(tmp_path / "log.sqlite", tmp_path / "out.jsonl")
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert stats["conversations_written"] == len(records) == 1 and stats["conversations_skipped"] == 1
    assert records[0]["messages"] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
    ]
    assert records[0]["metadata"]["feedback"] == -1
    assert export_jsonl(tmp_path / "log.sqlite", tmp_path / "good.jsonl", min_feedback=1)["conversations_written"] == 0


def test_log_is_wal_and_matches_the_pipeline_schema(tmp_path):
    from finetune.data.chatlog_schema import SCHEMA_VERSION

    ChatLog(tmp_path / "log.sqlite").close()
    db = sqlite3.connect(tmp_path / "log.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT version FROM schema_info").fetchone()[0] == SCHEMA_VERSION


def test_server_logs_both_turns_and_feedback(make_server):
    server = make_server()
    body = {"messages": [{"role": "user", "content": "first"}], "max_tokens": 3, "conversation_id": "conv-1"}
    reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).json()
    assert reply["conversation_id"] == "conv-1"
    history = httpx.get(server.url + "/api/conversations/conv-1").json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[1]["model"] == server.state.models.active.model_id and history[1]["tokens"] is not None
    ok = httpx.post(server.url + f"/api/messages/{reply['message_id']}/feedback", json={"feedback": 1})
    assert ok.status_code == 200
    assert httpx.get(server.url + "/api/conversations/conv-1").json()["messages"][1]["feedback"] == 1
    assert httpx.post(server.url + "/api/messages/99999/feedback", json={"feedback": 1}).status_code == 404
    assert (
        httpx.post(server.url + f"/api/messages/{reply['message_id']}/feedback", json={"feedback": 7}).status_code
        == 400
    )
    assert any(s["id"] == "conv-1" for s in httpx.get(server.url + "/api/conversations").json()["data"])


def test_logging_can_be_disabled(make_server, tmp_path):
    server = make_server(chat_log={"enabled": False, "path": str(tmp_path / "off.sqlite")})
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
    assert not (tmp_path / "off.sqlite").exists()
    assert httpx.get(server.url + "/api/conversations").json() == {"data": [], "enabled": False}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(config: Path, log_file) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "neural_chat_app", "serve", "--config", str(config), "--log-level", "warning"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def _wait_healthy(url: str, proc: subprocess.Popen) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become healthy")


@pytest.mark.integration
def test_conversation_survives_kill_9(tiny_model_dir, tmp_path):
    port, db = _free_port(), tmp_path / "chatlog.sqlite"
    config = tmp_path / "server.yaml"
    config.write_text(
        f"host: 127.0.0.1\nport: {port}\nmodel: {tiny_model_dir}\nmodel_dirs: []\n"
        f"limits: {{max_tokens: 480}}\nchat_log: {{enabled: true, path: {db}}}\n"
    )
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "server.log", "w") as log_file:
        proc = _start_server(config, log_file)
        try:
            _wait_healthy(url, proc)
            turn = {"messages": [{"role": "user", "content": "first"}], "max_tokens": 4, "conversation_id": "c1"}
            first = httpx.post(url + "/v1/chat/completions", json=turn, timeout=60).json()
            second = {
                "messages": [
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                    {"role": "user", "content": "second"},
                ],
                "max_tokens": 480,
                "conversation_id": "c1",
                "stream": True,
            }
            with httpx.stream("POST", url + "/v1/chat/completions", json=second, timeout=60) as stream:
                lines = stream.iter_lines()  # held: a discarded iterator closes the connection before the kill
                next(lines)
                os.kill(proc.pid, signal.SIGKILL)  # mid-reply
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

        db_conn = sqlite3.connect(db)
        assert db_conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db_conn.close()
        proc = _start_server(config, log_file)
        try:
            _wait_healthy(url, proc)
            messages = httpx.get(url + "/api/conversations/c1").json()["messages"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    contents = [(m["role"], m["content"]) for m in messages]
    assert contents[:3] == [
        ("user", "first"),
        ("assistant", first["choices"][0]["message"]["content"]),
        ("user", "second"),
    ]

    out = tmp_path / "export.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "neural_chat_app", "export-log", "--db", str(db), "--output", str(out)]
    subprocess.run(cli, cwd=REPO, env=env, check=True, capture_output=True)
    record = json.loads(out.read_text().splitlines()[0])
    assert record["messages"][0] == {"role": "user", "content": "first"}
    assert "feedback" in record["metadata"]


def test_redaction_masks_pii_before_storing(tmp_path):
    log = ChatLog(tmp_path / "log.sqlite", redact=["email", "ip"])
    log.ensure_session("s", None, "mail me at jane@example.com")
    log.add_message("s", "user", "I am jane@example.com on 10.0.0.1")
    stored = log.messages("s")[0]["content"]
    assert "jane@example.com" not in stored and "10.0.0.1" not in stored
    assert "jane@example.com" not in log.sessions()[0]["title"]
    with pytest.raises(ValueError, match="redact"):
        ChatLog(tmp_path / "other.sqlite", redact=["dna"])


def test_top_p_zero_is_greedy_not_an_error(make_server):
    server = make_server()
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "top_p": 0, "temperature": 1}
    assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200


# The version-1 schema, as a server before regenerate/edit wrote it (kept here: the file a user already has).
V1_SCHEMA = """
CREATE TABLE sessions (id TEXT PRIMARY KEY, created_at REAL NOT NULL, title TEXT, model TEXT);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL REFERENCES sessions(id),
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')), content TEXT NOT NULL,
    created_at REAL NOT NULL, model TEXT, latency_ms REAL, tokens INTEGER, feedback INTEGER CHECK (feedback IN (-1, 1)),
    metadata TEXT NOT NULL DEFAULT '{}');
CREATE INDEX messages_by_session ON messages(session_id, id);
CREATE TABLE schema_info (version INTEGER NOT NULL);
INSERT INTO schema_info VALUES (1);
INSERT INTO sessions VALUES ('old', 1.0, 'hi', 'tiny');
INSERT INTO messages (session_id, role, content, created_at, feedback) VALUES ('old', 'user', 'hi', 1.0, NULL);
INSERT INTO messages (session_id, role, content, created_at, feedback) VALUES ('old', 'assistant', 'hello', 2.0, 1);
"""


def test_a_version_1_log_is_migrated_in_place_and_keeps_working(tmp_path):
    from finetune.data.chatlog import read_chatlog
    from finetune.data.chatlog_schema import SCHEMA_VERSION

    path = tmp_path / "v1.sqlite"
    con = sqlite3.connect(path)
    con.executescript(V1_SCHEMA)
    con.close()
    # The pipeline reads a version-1 file as it is (read-only, never migrating it)...
    assert [c.messages for c in read_chatlog(path)] == [[{"role": "user", "content": "hi"},
                                                        {"role": "assistant", "content": "hello"}]]
    log = ChatLog(path)  # ...the writer migrates it
    assert sqlite3.connect(path).execute("SELECT version FROM schema_info").fetchone()[0] == SCHEMA_VERSION == 2
    old = log.messages("old")
    assert [(m["content"], m["feedback"], m["alternatives"]) for m in old] == [("hi", None, []), ("hello", 1, [])]
    new = log.add_message("old", "assistant", "hello again", "tiny", replaces=old[1]["id"])
    assert [m["content"] for m in log.messages("old")] == ["hi", "hello again"]
    log.close()
    ChatLog(path).close()  # opening a migrated file again changes nothing
    assert [c.messages[-1]["content"] for c in read_chatlog(path)] == ["hello again"]
    assert new > old[1]["id"]


def test_regenerate_edit_and_flip_keep_one_reply_per_turn(tmp_path):
    log = ChatLog(tmp_path / "log.sqlite")
    log.ensure_session("s", "tiny", "q")
    log.add_message("s", "user", "question")
    first = log.add_message("s", "assistant", "answer one", "tiny")
    assert log.replaceable("s", first) is None
    second = log.add_message("s", "assistant", "answer two", "tiny", replaces=first)  # regenerated
    shown = log.messages("s")
    assert [m["content"] for m in shown] == ["question", "answer two"]
    assert shown[1]["alternatives"] == [first, second]
    assert "No kept assistant reply" in log.replaceable("s", first)  # superseded: not regenerated again
    edited = log.edit_reply(second, "the user's answer")
    shown = log.messages("s")
    assert [m["content"] for m in shown] == ["question", "the user's answer"] and shown[1]["edited"]
    assert shown[1]["alternatives"] == [first, second, edited]
    assert log.keep_reply(first) == [first, second, edited]  # the page flips back to the first
    assert [m["content"] for m in log.messages("s")] == ["question", "answer one"]
    log.add_message("s", "user", "next")
    assert "not the last message" in log.replaceable("s", first)
    with pytest.raises(LookupError, match="No assistant reply"):
        log.edit_reply(first + 1000, "x")
    with pytest.raises(LookupError, match="No assistant reply"):
        log.add_message("other", "assistant", "x", replaces=first)  # a reply of another conversation
    rows = sqlite3.connect(tmp_path / "log.sqlite").execute(
        "SELECT id, superseded_by, edited FROM messages WHERE role = 'assistant' ORDER BY id").fetchall()
    assert rows == [(first, None, 0), (second, first, 0), (edited, first, 1)]


def test_server_regenerates_edits_and_flips_a_reply(make_server):
    server = make_server()
    url, turn = server.url, [{"role": "user", "content": "first"}]
    first = httpx.post(url + "/v1/chat/completions", json={"messages": turn, "max_tokens": 3,
                                                           "conversation_id": "c"}, timeout=60).json()
    again = {"messages": turn, "max_tokens": 3, "conversation_id": "c", "regenerate": first["message_id"]}
    second = httpx.post(url + "/v1/chat/completions", json=again, timeout=60).json()
    history = httpx.get(url + "/api/conversations/c").json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"]  # the prompt is not logged twice
    assert history[1]["id"] == second["message_id"]
    assert history[1]["alternatives"] == [first["message_id"], second["message_id"]]
    # the replaced reply is superseded now: it cannot be regenerated again
    assert httpx.post(url + "/v1/chat/completions", json=again, timeout=60).status_code == 409
    edited = httpx.post(url + f"/api/messages/{second['message_id']}/edit", json={"content": "mine"}).json()
    history = httpx.get(url + "/api/conversations/c").json()["messages"]
    assert (history[1]["content"], history[1]["edited"], history[1]["id"]) == ("mine", True, edited["id"])
    flipped = httpx.post(url + f"/api/messages/{first['message_id']}/keep").json()
    assert flipped["alternatives"] == [first["message_id"], second["message_id"], edited["id"]]
    assert httpx.get(url + "/api/conversations/c").json()["messages"][1]["id"] == first["message_id"]
    assert httpx.post(url + "/api/messages/99999/keep").status_code == 404
    assert httpx.post(url + "/api/messages/99999/edit", json={"content": "x"}).status_code == 404
    assert httpx.post(url + f"/api/messages/{first['message_id']}/edit", json={"content": ""}).status_code == 400
    no_conversation = {"messages": turn, "max_tokens": 3, "regenerate": first["message_id"]}
    assert httpx.post(url + "/v1/chat/completions", json=no_conversation, timeout=60).status_code == 400
