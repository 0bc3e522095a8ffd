"""The conversation log on PostgreSQL (chat_log.url) behaves as on SQLite: the same calls give the same rows, ids and
conversations; writers on several connections (replicas) share it; the data pipeline reads it.

Starts its own PostgreSQL cluster in a scratch folder (Debian's postgresql package; benchmarks/cluster.py).
Run: PYTHONPATH=. pytest -q -m "" tests/neural_chat_app/test_chatlog_postgres.py
"""

from __future__ import annotations

import json
import secrets
import sys
import threading

import pytest

from neural_chat_app.chatlog import ChatLog
from tests.require_backends import skip_missing_program


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("psycopg")
    from benchmarks.cluster import MissingBinary, postgres

    try:
        with postgres() as url:
            yield url
    except MissingBinary as err:
        skip_missing_program("pg_ctl", str(err))


@pytest.fixture
def pg_url(cluster):
    """A new database of its own for each test."""
    import psycopg

    name = f"log_{secrets.token_hex(4)}"
    with psycopg.connect(cluster, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return cluster.rsplit("/", 1)[0] + "/" + name


def _scenario(target) -> dict:
    """Every kind of write ChatLog does, then what it reads back (times left out: they differ run to run)."""
    log = ChatLog(target)
    log.ensure_session("s1", "tiny", "hello")
    log.ensure_session("s1", "tiny", "ignored: the session exists")
    log.add_message("s1", "user", "hello", "tiny")
    first = log.add_message("s1", "assistant", "hi there", "tiny", latency_ms=12.5, tokens=3, metadata={"k": [1]})
    again = log.add_message("s1", "assistant", "hello again", "tiny", replaces=first)
    edited = log.edit_reply(first, "my own words")
    flipped = log.keep_reply(again)
    feedback = [log.set_feedback(again, -1), log.set_feedback(edited, 1), log.set_feedback(10_000, 1)]
    with pytest.raises(ValueError, match="feedback"):
        log.set_feedback(again, 5)
    with pytest.raises(LookupError, match="No assistant reply"):
        log.add_message("s1", "assistant", "x", replaces=1)  # the user's message
    log.ensure_session("s2", "tiny", "unanswered")
    log.add_message("s2", "user", "nobody answered", "tiny")
    out = {
        "ids": [first, again, edited, flipped],
        "feedback": feedback,
        "has": [log.has_session("s1"), log.has_session("nope")],
        "messages": [{k: v for k, v in m.items() if k != "created_at"} for m in log.messages("s1")],
        "sessions": sorted((s["id"], s["title"], s["model"], s["messages"]) for s in log.sessions()),
        "replaceable": [log.replaceable("s1", again), log.replaceable("s1", 1)],
    }
    log.close()
    return out


@pytest.mark.integration
def test_postgres_log_gives_what_sqlite_gives(pg_url, tmp_path):
    assert _scenario(pg_url) == _scenario(tmp_path / "log.sqlite")


@pytest.mark.integration
def test_times_keep_their_fraction_of_a_second(pg_url):
    import time

    log = ChatLog(pg_url)
    log.ensure_session("s", "m", "t")
    before = time.time()
    log.add_message("s", "user", "hi")
    # REAL is 4 bytes in PostgreSQL (a Unix time rounded to ~2 minutes): the log's floats are DOUBLE PRECISION
    assert abs(log.messages("s")[0]["created_at"] - before) < 1
    log.close()


@pytest.mark.integration
def test_replicas_start_together_and_write_one_log(pg_url):
    logs: list[ChatLog] = []
    errors: list[BaseException] = []

    def open_and_write(i: int):
        try:
            log = ChatLog(pg_url)  # the schema is created once, whoever comes first
            logs.append(log)
            for j in range(5):
                log.ensure_session(f"r{i}-{j}", "m", "t")
                log.add_message(f"r{i}-{j}", "user", f"from {i}")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=open_and_write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    ids = [m["id"] for s in logs[0].sessions() for m in logs[0].messages(s["id"])]
    assert len(ids) == len(set(ids)) == 20
    assert logs[0]._db.execute("SELECT COUNT(*) FROM schema_info").fetchone()[0] == 1
    for log in logs:
        log.close()


@pytest.mark.integration
def test_the_pipeline_reads_a_postgres_log(pg_url):
    from finetune.data.chatlog import read_chatlog

    log = ChatLog(pg_url)
    log.ensure_session("s1", "tiny", "hello")
    log.add_message("s1", "user", "hello", "tiny")
    reply = log.add_message("s1", "assistant", "hi", "tiny")
    log.edit_reply(reply, "better")
    log.close()
    records = list(read_chatlog(pg_url))
    assert [r.messages for r in records] == [[{"role": "user", "content": "hello"},
                                              {"role": "assistant", "content": "better"}]]
    assert records[0].origin.endswith("#session=s1") and records[0].origin.startswith("postgresql://")


def test_unreachable_database_names_it_without_the_password():
    pytest.importorskip("psycopg")
    from benchmarks.cluster import free_port

    url = f"postgresql://chat:s3cret@127.0.0.1:{free_port()}/log"
    with pytest.raises(ConnectionError, match=r"cannot reach the conversation log postgresql://chat:\*\*\*@") as err:
        ChatLog(url)
    assert "s3cret" not in str(err.value)


def test_without_psycopg_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ImportError, match=r'pip install "psycopg\[binary\]"'):
        ChatLog("postgresql://chat@127.0.0.1:5432/log")


def test_settings_take_a_postgres_url_and_refuse_another():
    from neural_chat_app.server.settings import ChatLogSettings

    assert ChatLogSettings(url="postgresql://chat@db/log").target == "postgresql://chat@db/log"
    assert ChatLogSettings(path="/x/log.sqlite").target == "/x/log.sqlite"
    with pytest.raises(ValueError, match=r"chat_log.url must be a postgresql://.*'mysql://u:\*\*\*@db/x'"):
        ChatLogSettings(url="mysql://u:pw@db/x")


@pytest.mark.integration
def test_export_and_the_improve_loop_read_a_postgres_log(pg_url, tmp_path):
    from neural_chat_app.export_log import export_jsonl, export_preferences

    def export(target, name: str) -> list[list[dict]]:
        _scenario(target)
        outputs = []
        for kind in ("messages", "dpo", "kto"):
            out = tmp_path / f"{name}-{kind}.jsonl"
            if kind == "messages":
                counts = export_jsonl(target, out, since=0)  # what improve calls, with the loop's last run time
            else:
                counts = export_preferences(target, out, kind)
            lines = [json.loads(line) for line in out.read_text().splitlines()]
            for line in lines:
                line.get("metadata", {}).pop("created_at", None)
            outputs.append([{k: v for k, v in counts.items() if k != "output"}, lines])
        return outputs

    from_postgres = export(pg_url, "pg")
    assert from_postgres == export(tmp_path / "log.sqlite", "sqlite")
    # one conversation; its kept reply is rated down, so both DPO pairs are left out; two rated replies for KTO
    assert from_postgres[0][0]["conversations_written"] == 1 and from_postgres[1][0]["pairs_left_out"] == 2
    assert from_postgres[2][0]["rated_replies_written"] == 2


@pytest.mark.integration
def test_a_broken_connection_fails_one_write_and_the_next_reconnects(pg_url):
    import psycopg

    log = ChatLog(pg_url)
    log.ensure_session("s", "m", "t")
    pid = log._db.connection.info.backend_pid
    with psycopg.connect(pg_url, autocommit=True) as admin:  # what a database restart does to the connection
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        log.add_message("s", "user", "lost: the request that met the broken connection gets an error")
    kept = log.add_message("s", "user", "kept")
    assert [(m["id"], m["content"]) for m in log.messages("s")] == [(kept, "kept")]
    assert log._db.connection.info.backend_pid != pid
    log.close()
