"""Reading files record by record: encodings, line endings, containers, bad bytes (finetune/data/sources.py)."""

import io
import json

import pytest

from finetune.data import json_stream
from finetune.data.json_stream import JsonArrayError, iter_json_array
from finetune.data.records import Conversation, Reject
from finetune.data.sources import discover, read_source, sniff


def test_bad_records_file_rejects_each_bad_line_and_keeps_the_rest(fixtures_dir):
    items = list(read_source(fixtures_dir / "bad_records.jsonl"))
    kept = [i for i in items if isinstance(i, Conversation)]
    rejects = {int(i.origin.rsplit(":", 1)[1]): i.code for i in items if isinstance(i, Reject)}
    assert [c.messages[1]["content"] for c in kept] == ["Hola.", "Adios."]
    assert rejects == {2: "invalid_utf8", 3: "wrong_type", 4: "missing_field", 5: "bad_role", 6: "invalid_json",
                       7: "unknown_format", 8: "not_an_object", 11: "truncated_line"}
    # line 9 is blank: not a record, neither kept nor rejected
    assert len(items) == 10


def test_invalid_utf8_reject_shows_the_bytes(fixtures_dir):
    bad = next(i for i in read_source(fixtures_dir / "bad_records.jsonl") if isinstance(i, Reject))
    assert bad.origin.endswith("bad_records.jsonl:2")
    assert "caf\\xe9" in bad.record


def test_crlf_and_bom_read_like_plain_lf(fixtures_dir, tmp_path):
    items = list(read_source(fixtures_dir / "prompt_response_crlf_bom.jsonl"))
    assert all(isinstance(i, Conversation) for i in items) and len(items) == 2
    assert items[0].messages[0]["content"] == "What colour is the sky on a clear day?"
    assert not items[1].messages[1]["content"].endswith("\r")
    lf = tmp_path / "lf.jsonl"
    lf.write_bytes((fixtures_dir / "prompt_response_crlf_bom.jsonl").read_bytes()[3:].replace(b"\r\n", b"\n"))
    assert [i.messages for i in read_source(lf)] == [i.messages for i in items]


def test_last_line_without_newline_is_fine_when_complete(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"prompt": "a", "response": "b"}))
    assert [type(i) for i in read_source(path)] == [Conversation]


def test_json_array_files_stream_with_line_numbers(fixtures_dir):
    items = list(read_source(fixtures_dir / "alpaca.json"))
    assert [i.origin.rsplit(":", 1)[1] for i in items] == ["2", "7"]
    assert all(i.format == "alpaca" for i in items)


def test_json_array_survives_elements_split_across_chunks(monkeypatch):
    monkeypatch.setattr(json_stream, "CHUNK", 7)  # every element and number straddles a chunk boundary
    elements = [{"prompt": f"p{i}" * 5, "response": "r"} for i in range(20)] + [12345678, True]
    got = [e for _, e in iter_json_array(io.StringIO(json.dumps(elements, indent=1)))]
    assert got == elements


def test_json_array_truncated_keeps_good_elements_then_rejects(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('[\n{"prompt": "a", "response": "b"},\n{"prompt": "c", "resp')
    items = list(read_source(path))
    assert isinstance(items[0], Conversation)
    assert isinstance(items[1], Reject) and items[1].code == "invalid_json"
    assert items[1].origin.endswith("cut.json:3")
    assert len(items) == 2


def test_json_array_missing_comma_is_reported():
    with pytest.raises(JsonArrayError, match="expected ',' or ']'"):
        list(iter_json_array(io.StringIO('[{"a": 1} {"b": 2}]')))


def test_json_array_invalid_utf8_element_is_rejected_alone(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'\xef\xbb\xbf[{"prompt": "caf\xe9", "response": "x"},\r\n {"prompt": "ok", "response": "y"}]')
    items = list(read_source(path))
    assert isinstance(items[0], Reject) and items[0].code == "invalid_utf8"
    assert items[0].record == {"prompt": "caf\\xe9", "response": "x"}
    assert isinstance(items[1], Conversation) and items[1].origin.endswith(":2")


def test_empty_json_array_has_no_records(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(" [ ] ")
    assert list(read_source(path)) == []


def test_sniff_reads_content_not_names(tmp_path, fixtures_dir):
    array_named_jsonl = tmp_path / "x.jsonl"
    array_named_jsonl.write_text('[{"prompt": "a", "response": "b"}]')
    assert sniff(array_named_jsonl) == "json_array"
    assert sniff(fixtures_dir / "prompt_response_crlf_bom.jsonl") == "jsonl"


def test_discover_sorts_filters_and_reports_skipped(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jsonl", "a.json", "sub/c.db", "notes.md"):
        (tmp_path / name).write_text("")
    files, skipped = discover([str(tmp_path)], ["*.jsonl", "*.json", "*.db"])
    assert [f.name for f in files] == ["a.json", "b.jsonl", "c.db"]
    assert [f.name for f in skipped] == ["notes.md"]
    # a file named explicitly is read whatever its name
    assert discover([str(tmp_path / "notes.md")], ["*.jsonl"])[0] == [tmp_path / "notes.md"]


def test_discover_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="ingest.paths: .*nope.jsonl does not exist"):
        discover([str(tmp_path / "nope.jsonl")], ["*"])


def _items(path):
    return [(type(i).__name__, i.origin, getattr(i, "messages", None), getattr(i, "metadata", None),
             getattr(i, "detail", None), repr(i.raw if isinstance(i, Conversation) else i.record))
            for i in read_source(path)]


def test_orjson_reads_what_json_reads(tmp_path, fixtures_dir, monkeypatch):
    """orjson parses when it can; a line it refuses or may misread (a 19-digit run) goes to json, so records,
    rejects and their messages are the same with it as without."""
    from finetune.data import sources
    from tests.finetune.data._data_helpers import write_tricky

    pytest.importorskip("orjson")
    src = write_tricky(tmp_path / "in.jsonl", 600, seed=14)
    big = tmp_path / "big.jsonl"
    big.write_text('{"prompt": "p", "response": "r", "id": 123456789012345678901234567890, "n": -9223372036854775809,'
                   ' "x": 1e400, "f": 0.1000000000000000055511151231257827}\n')
    paths = [src, big, fixtures_dir / "bad_records.jsonl", fixtures_dir / "prompt_response_crlf_bom.jsonl"]
    with_orjson = [_items(p) for p in paths]
    (meta,) = [i[3] for i in with_orjson[1]]
    assert meta["id"] == 123456789012345678901234567890 and meta["n"] == -9223372036854775809
    monkeypatch.setattr(sources, "_import_orjson", lambda: None)
    assert [_items(p) for p in paths] == with_orjson


def test_line_ranges_read_like_the_whole_file(tmp_path):
    from finetune.data.sources import load_line, read_jsonl_range
    from tests.finetune.data._data_helpers import write_tricky

    src = write_tricky(tmp_path / "in.jsonl", 300, seed=15)
    data = src.read_bytes()
    whole = _items(src)
    cuts = [0, 1, 5000, 5001, 20000, len(data)]
    got = []
    for a, b in zip(cuts, cuts[1:]):  # cut anywhere, then extended to whole lines as plan_chunks does
        a, b = (0 if a == 0 else data.index(b"\n", a - 1) + 1), (len(data) if b == len(data) else
                                                                 data.index(b"\n", b - 1) + 1)
        for item, at, size in read_jsonl_range(str(src), a, b - a, data[:a].count(b"\n") + 1):
            got.append(item)
            if isinstance(item, Conversation):
                assert load_line(str(src), at, size) == item.raw
    assert [(type(i).__name__, i.origin) for i in got] == [(w[0], w[1]) for w in whole]
