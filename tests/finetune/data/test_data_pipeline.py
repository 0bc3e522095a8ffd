"""prepare_dataset end to end: accounting, rejects, stats, splits, errors (finetune/data/pipeline.py)."""

import json
import shutil
import warnings

import pytest

from finetune.data import DataPipelineConfig, NoConversationsError, SmallDatasetWarning, prepare_dataset
from tests.finetune.data._data_helpers import chat, distinct_chats, make_chatlog, read_jsonl, write_jsonl


def run(paths, out, **sections):
    sections.setdefault("export", {}).setdefault("min_conversations", 0)
    sections["export"]["output_dir"] = str(out)
    return prepare_dataset(DataPipelineConfig.from_dict({"ingest": {"paths": [str(p) for p in paths]}, **sections}))


def check_accounting(result):
    """records read == written + rejected, recomputed from the files, not just taken from stats.json."""
    stats = result.stats
    written = sum(s["conversations"] for s in stats["splits"].values())
    rejects = read_jsonl(result.rejects)
    assert stats["records_read"] == written + len(rejects)
    assert stats["records_rejected"] == len(rejects)
    assert sum(stats["rejected_by_reason"].values()) == len(rejects)
    assert stats["accounting_ok"] is True
    return rejects


def test_mixed_folder_of_every_format(fixtures_dir, tmp_path):
    logs = tmp_path / "logs"
    shutil.copytree(fixtures_dir, logs)
    make_chatlog(logs / "chat.db", {"s1": [("user", "Is the office open on Sunday?", None),
                                           ("assistant", "No, it opens Monday to Friday.", 1)]})
    (logs / "README.md").write_text("not data")
    result = run([logs], tmp_path / "out")
    stats = result.stats
    assert stats["formats"] == {"alpaca": 3, "chatlog": 1, "messages": 3, "prompt_response": 4, "sharegpt": 2}
    assert stats["records_read"] == 21 and stats["records_written"] == 13
    assert stats["files_skipped"] == [str(logs / "README.md")]
    rejects = check_accounting(result)
    assert {r["reason"] for r in rejects} == {
        "ingest.invalid_utf8", "ingest.wrong_type", "ingest.missing_field", "ingest.bad_role",
        "ingest.invalid_json", "ingest.unknown_format", "ingest.not_an_object", "ingest.truncated_line"}
    assert all(r["origin"].startswith(str(logs)) and ":" in r["origin"] for r in rejects)
    assert {s: c["conversations"] for s, c in stats["splits"].items()} == {"train": 11, "validation": 1, "test": 1}
    rows = [row for s in ("train", "validation", "test") for row in read_jsonl(result.splits[s])]
    assert len(rows) == 13
    assert all([m["role"] for m in r["messages"]][-1] == "assistant" for r in rows)
    assert (tmp_path / "out" / "token_lengths.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats
    assert not list((tmp_path / "out").glob(".staging-*"))  # the scratch folder is removed


def test_every_stage_writes_rejects_with_original_record(tmp_path):
    records = distinct_chats(5, augmented=True)
    records.append(dict(records[0]))                                      # dedup.exact
    records.append(chat("only a user", "ok", augmented=False))              # filter.metadata
    records.append({"messages": [{"role": "user", "content": "hi"}]})        # filter.role_order
    records.append(chat("fine question", " \x00 "))                         # clean.empty_message
    records.append({"messages": "oops"})                                  # ingest.wrong_type
    src = write_jsonl(tmp_path / "in.jsonl", records)
    result = run([src], tmp_path / "out", filter={"metadata": ["metadata.augmented == true"]})
    rejects = check_accounting(result)
    by_reason = {r["reason"]: r for r in rejects}
    assert set(by_reason) == {"dedup.exact", "filter.metadata", "filter.role_order", "clean.empty_message",
                              "ingest.wrong_type"}
    assert by_reason["dedup.exact"]["origin"] == f"{src}:6"
    assert by_reason["dedup.exact"]["detail"] == f"same normalized text as {src}:1"
    assert by_reason["clean.empty_message"]["record"] == records[8]  # the original, before cleaning
    assert result.stats["duplicates_removed"] == {"exact": 1, "near": 0}


def test_redactions_are_counted_and_applied(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        chat("My mail is ann@example.org and my phone +1 415-555-2671", "Noted, I will write to you."),
        chat("Card 4111-1111-1111-1111 from 10.0.0.7", "Please never share card numbers; see https://x.org/faq."),
    ])
    result = run([src], tmp_path / "out", split={"train_ratio": 1.0, "validation_ratio": 0, "test_ratio": 0})
    assert result.stats["redactions"] == {"card": 1, "email": 1, "ip": 1, "phone": 1, "url": 1}
    text = result.splits["train"].read_text()
    assert "<EMAIL>" in text and "<PHONE>" in text and "<CARD>" in text and "<IP>" in text and "<URL>" in text
    assert "ann@example.org" not in text and "4111" not in text
    assert set(result.splits) == {"train"}


def test_same_seed_same_bytes_other_seed_other_split(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", distinct_chats(60))
    a = run([src], tmp_path / "a", split={"seed": 1})
    b = run([src], tmp_path / "b", split={"seed": 1})
    c = run([src], tmp_path / "c", split={"seed": 2})
    for split in ("train", "validation", "test"):
        assert a.splits[split].read_bytes() == b.splits[split].read_bytes()
    assert a.splits["test"].read_bytes() != c.splits["test"].read_bytes()
    assert {s: v["conversations"] for s, v in a.stats["splits"].items()} == {"train": 48, "validation": 6, "test": 6}


def test_per_turn_examples_of_one_conversation_stay_in_one_split(tmp_path):
    records = []
    for i in range(40):
        records.append({"messages": [
            {"role": "user", "content": f"First question {i} about topic{i}"},
            {"role": "assistant", "content": f"First answer {i} with detail{i * 3}"},
            {"role": "user", "content": f"Follow-up {i} on item{i * 7}"},
            {"role": "assistant", "content": f"Second answer {i} mentioning thing{i * 11}"}],
            "metadata": {"conv": i}})
    src = write_jsonl(tmp_path / "in.jsonl", records)
    result = run([src], tmp_path / "out", export={"multi_turn": "per_turn"})
    where = {}
    for split, path in result.splits.items():
        for row in read_jsonl(path):
            where.setdefault(row["metadata"]["conv"], set()).add(split)
            assert row["metadata"]["turn"] in (1, 2)
    assert len(where) == 40 and all(len(s) == 1 for s in where.values())
    assert all(v["examples"] == 2 * v["conversations"] for v in result.stats["splits"].values())


def test_group_by_metadata_key_keeps_trees_together(tmp_path):
    records = [chat(f"q{i} about subject{i} in depth", f"a{i} explained with example{i}", tree_id=f"t{i % 7}")
               for i in range(70)]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    result = run([src], tmp_path / "out", split={"group_by": "tree_id"})
    trees = {}
    for split, path in result.splits.items():
        for row in read_jsonl(path):
            trees.setdefault(row["metadata"]["tree_id"], set()).add(split)
    assert len(trees) == 7 and all(len(s) == 1 for s in trees.values())


@pytest.mark.parametrize("fmt, suffix, keys", [
    ("chatml", "jsonl", {"text"}),
    ("instruction", "jsonl", {"instruction", "context", "response"}),
])
def test_jsonl_export_formats(tmp_path, fmt, suffix, keys):
    src = write_jsonl(tmp_path / "in.jsonl", distinct_chats(10))
    result = run([src], tmp_path / "out", export={"format_type": fmt})
    assert result.splits["train"].name == f"train.{suffix}"
    assert all(set(row) == keys for row in read_jsonl(result.splits["train"]))


def test_alpaca_export_is_a_json_array(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", distinct_chats(10))
    result = run([src], tmp_path / "out", export={"format_type": "alpaca"})
    rows = json.loads(result.splits["train"].read_text())
    assert len(rows) == 8 and set(rows[0]) == {"instruction", "input", "output"}


def test_nothing_left_raises_with_counts_per_filter(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", distinct_chats(6, augmented=False) + [{"messages": 1}])
    with pytest.raises(NoConversationsError) as e:
        run([src], tmp_path / "out", filter={"metadata": ["metadata.augmented == true"]})
    message = str(e.value)
    assert message.startswith("No conversations to train on: all 7 records")
    assert "filter.metadata: 6" in message and "ingest.wrong_type: 1" in message
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())  # still written, for the user to look at
    assert stats["records_read"] == 7 and stats["records_rejected"] == 7


def test_small_data_warns_with_the_number(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", distinct_chats(12))
    with pytest.warns(SmallDatasetWarning, match="Training data too small: 12 conversations kept, fewer than "
                                                 "export.min_conversations=100"):
        result = run([src], tmp_path / "out", export={"min_conversations": 100})
    assert result.stats["warnings"][0].startswith("Training data too small: 12")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run([src], tmp_path / "out2", export={"min_conversations": 12})


def test_token_filter_and_histogram_use_the_target_tokenizer(tmp_path, tiny_model_dir):
    short, long = chat("Hi there", "Hello."), chat("Tell me a story " + "once upon a time " * 3, "The end " * 40)
    src = write_jsonl(tmp_path / "in.jsonl", [short, long])
    result = run([src], tmp_path / "out", filter={"tokenizer": str(tiny_model_dir), "max_tokens": 60,
                                                  "max_repetition": None},
                 split={"train_ratio": 1.0, "validation_ratio": 0, "test_ratio": 0})
    hist = result.stats["length_histogram"]
    assert hist["unit"] == "tokens" and sum(hist["counts"]) == 1 and 0 < hist["max"] <= 60
    rejects = check_accounting(result)
    assert rejects[0]["reason"] == "filter.max_tokens" and "more than max_tokens=60" in rejects[0]["detail"]


def test_lone_surrogates_never_crash_the_writers(tmp_path):
    src = tmp_path / "in.jsonl"
    good = distinct_chats(3)
    lines = [json.dumps(r) for r in good]
    lines.append('{"prompt": "half an emoji \\ud83d", "response": "x"}')          # rejected: cannot be trained on
    lines.append(json.dumps(chat("fine question here", "fine answer there")).replace(
        '"fine answer there"}]', '"fine answer there"}], "metadata": {"note": "\\udc80"}'))  # kept, metadata escaped
    src.write_text("\n".join(lines) + "\n")
    result = run([src], tmp_path / "out", split={"train_ratio": 1.0, "validation_ratio": 0, "test_ratio": 0})
    assert result.stats["rejected_by_reason"] == {"ingest.invalid_unicode": 1}
    assert len(read_jsonl(result.splits["train"])) == 4


def test_outputs_of_an_earlier_run_are_removed(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", distinct_chats(10))
    run([src], tmp_path / "out", export={"format_type": "alpaca"})
    assert (tmp_path / "out" / "test.json").exists()
    result = run([src], tmp_path / "out", split={"train_ratio": 0.9, "validation_ratio": 0.1, "test_ratio": 0})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "rejects.jsonl", "stats.json", "token_lengths.png", "train.jsonl", "validation.jsonl"]
    assert set(result.splits) == {"train", "validation"}


def test_empty_paths_and_missing_files_are_clear(tmp_path):
    from finetune.data import ConfigError

    with pytest.raises(ConfigError, match="ingest.paths is empty"):
        prepare_dataset({"export": {"output_dir": str(tmp_path)}})
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        run([tmp_path / "missing.jsonl"], tmp_path / "out")


def test_output_loads_with_datasets_as_the_chat_task_does(fixtures_dir, tmp_path):
    from datasets import load_dataset

    result = run([fixtures_dir], tmp_path / "out")
    ds = load_dataset("json", data_files={s: str(p) for s, p in result.splits.items()})
    assert ds["train"].num_rows == result.stats["splits"]["train"]["examples"]
    assert ds["train"][0]["messages"][0]["role"] in ("system", "user")
