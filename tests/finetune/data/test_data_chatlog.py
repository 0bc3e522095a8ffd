"""Reading the chat app's SQLite conversation log (finetune/data/chatlog.py)."""

import sqlite3

import pytest

from finetune.data.records import Conversation, Reject, SourceError
from finetune.data.sources import read_source, sniff
from tests.finetune.data._data_helpers import make_chatlog


def test_one_conversation_per_session_in_order_with_feedback(tmp_path):
    db = make_chatlog(tmp_path / "log.db", {
        "s1": [("user", "hi", None), ("assistant", "hello", 1)],
        "s2": [("system", "be brief", None), ("user", "why?", None), ("assistant", "because", -1)],
    })
    assert sniff(db) == "sqlite"
    items = list(read_source(db))
    assert [i.origin.split("#")[1] for i in items] == ["session=s1", "session=s2"]
    assert items[1].messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why?"},
                                 {"role": "assistant", "content": "because"}]
    assert items[0].metadata == {"feedback": 1, "turn_feedback": [1], "session_id": "s1", "model": "smollm2",
                                 "created_at": 1000.0, "title": "title s1"}
    assert items[1].metadata["feedback"] == -1
    assert all(i.format == "chatlog" for i in items)


def test_metadata_matches_the_chat_apps_jsonl_export(tmp_path):
    from neural_chat_app.export_log import export_jsonl

    db = make_chatlog(tmp_path / "log.db", {"s1": [("user", "a", None), ("assistant", "b", -1),
                                                   ("user", "c", None), ("assistant", "d", 1)]})
    export_jsonl(db, tmp_path / "log.jsonl")
    from_db = next(read_source(db))
    from_jsonl = next(read_source(tmp_path / "log.jsonl"))
    assert from_db.messages == from_jsonl.messages
    assert {k: from_db.metadata[k] for k in from_jsonl.metadata} == from_jsonl.metadata


def test_empty_session_and_orphan_messages_are_accounted(tmp_path):
    db = make_chatlog(tmp_path / "log.db", {"empty": [], "s1": [("user", "a", None), ("assistant", "b", None)]})
    con = sqlite3.connect(db)
    con.execute("INSERT INTO messages (session_id, role, content, created_at) VALUES ('gone', 'user', 'x', 1)")
    con.commit()
    con.close()
    items = list(read_source(db))
    assert isinstance(items[0], Reject) and items[0].code == "empty_session"
    assert isinstance(items[1], Conversation)
    assert isinstance(items[2], Conversation) and items[2].origin.endswith("#session=gone")


def test_non_text_content_is_rejected(tmp_path):
    db = make_chatlog(tmp_path / "log.db", {"s1": [("user", "a", None), ("assistant", "b", None)]})
    con = sqlite3.connect(db)
    # A TEXT column turns numbers into text, but a BLOB written by other code stays bytes.
    con.execute("UPDATE messages SET content = X'C3A9' WHERE role = 'assistant'")
    con.commit()
    con.close()
    (item,) = read_source(db)
    assert isinstance(item, Reject) and item.code == "wrong_type"


def test_invalid_utf8_text_rejects_the_session_and_the_run_goes_on(tmp_path):
    db = make_chatlog(tmp_path / "log.db", {"s1": [("user", "a", None), ("assistant", "b", None)],
                                            "s2": [("user", "c", None), ("assistant", "d", None)]})
    con = sqlite3.connect(db)
    con.execute("UPDATE messages SET content = CAST(X'636166E9' AS TEXT) WHERE session_id = 's1' AND role = 'user'")
    con.commit()
    con.close()
    first, second = read_source(db)
    assert isinstance(first, Reject) and first.code == "invalid_utf8"
    assert isinstance(second, Conversation)


def test_newer_schema_is_refused(tmp_path):
    db = make_chatlog(tmp_path / "log.db", {}, version=99)
    with pytest.raises(SourceError, match="schema version 99 is newer"):
        list(read_source(db))


def test_other_sqlite_files_are_refused_by_name(tmp_path):
    db = tmp_path / "other.sqlite"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(SourceError, match=r"other.sqlite: .*\['messages', 'sessions'\]"):
        list(read_source(db))
