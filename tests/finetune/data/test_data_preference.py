"""Preference data (TRL's DPO and KTO rows) through the pipeline: formats, rejects, cleaning, filters, dedup on the
whole example, splits grouped by prompt, and files that finetune_model(task="dpo"/"kto") and finetune.evaluate
read unchanged.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python -m pytest -q tests/finetune/data/test_data_preference.py
(add -m "" for the end-to-end training test)
"""

from __future__ import annotations

import json

import pytest

from finetune.data import ConfigError, DataPipelineConfig, NoConversationsError, prepare_dataset
from finetune.data.formats import to_conversation
from finetune.data.records import Preference
from finetune.records import check_records, read_records
from tests.finetune.data._data_helpers import pair, read_jsonl, write_jsonl, write_preferences

USER, ASSISTANT = "user", "assistant"


def run(src, out, **sections) -> object:
    export = {"output_dir": str(out), "format_type": "preference", "min_conversations": 0,
              **sections.pop("export", {})}
    return prepare_dataset(DataPipelineConfig.from_dict({"ingest": {"paths": [str(src)]}, "export": export,
                                                         "workers": 1, **sections}))


def rows(result, split="train") -> list[dict]:
    return read_jsonl(result.splits[split])


def distinct_pairs(n: int, per_prompt: int = 1) -> list[dict]:
    return [pair(f"Question {i // per_prompt}: what is {i // per_prompt} times seven, {'x' * (i // per_prompt % 5)}?",
                 f"Good answer {i}: word{i} token{i * 3} item{i * 11}", f"Bad answer {i}: other{i} thing{i * 5}")
            for i in range(n)]


# --- formats ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("record,fmt,plain,prompt,replies", [
    (pair("q?", "good", "bad"), "dpo", False, [(USER, "q?")], {"chosen": [(ASSISTANT, "good")],
                                                              "rejected": [(ASSISTANT, "bad")]}),
    ({"prompt": "Q: q?\nA:", "chosen": " good", "rejected": " bad"}, "dpo", True, [(USER, "Q: q?\nA:")],
     {"chosen": [(ASSISTANT, " good")], "rejected": [(ASSISTANT, " bad")]}),
    ({"chosen": [{"role": "system", "content": "s"}, {"role": "user", "content": "q?"},
                 {"role": "assistant", "content": "good"}],
      "rejected": [{"role": "system", "content": "s"}, {"role": "user", "content": "q?"},
                   {"role": "assistant", "content": "bad"}]},
     "dpo_implicit", False, [("system", "s"), (USER, "q?")], {"chosen": [(ASSISTANT, "good")],
                                                              "rejected": [(ASSISTANT, "bad")]}),
    ({"chosen": "Q: q? A: good", "rejected": "Q: q? A: bad"}, "dpo_implicit", True, [(USER, "Q: q? A:")],
     {"chosen": [(ASSISTANT, " good")], "rejected": [(ASSISTANT, " bad")]}),
    ({"prompt": "q?", "completion": "fine", "label": False}, "kto", True, [(USER, "q?")],
     {"completion": [(ASSISTANT, "fine")]}),
], ids=["conversational", "plain", "implicit", "implicit-plain", "kto"])
def test_each_preference_form_becomes_one_record_type(record, fmt, plain, prompt, replies):
    pref = to_conversation(record, "f.jsonl:1")
    assert isinstance(pref, Preference) and pref.format == fmt and pref.plain is plain
    assert [(m["role"], m["content"]) for m in pref.prompt] == prompt
    assert {k: [(m["role"], m["content"]) for m in v] for k, v in pref.replies.items()} == replies
    assert pref.label == (False if fmt == "kto" else None)


def test_malformed_records_are_rejected_with_file_line_and_reason(tmp_path):
    records = distinct_pairs(3) + [
        pair("q1?", "same", "same"),
        pair("q2?", "  ", "bad"),
        {"prompt": "q3?", "completion": "x", "label": "maybe"},
        pair([{"role": "user", "content": "q4"}, {"role": "assistant", "content": "a"}], "b", "c"),
        {"chosen": [{"role": "user", "content": "q5"}, {"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
        {"prompt": "q6?", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"},
        pair("q7?", "Same reply.", "same reply."),  # case differs: two replies, kept
        pair("q8?", "Two  spaces", "Two spaces"),  # the same once normalized: clean.same_replies
        {"messages": [{"role": "user", "content": "a chat"}, {"role": "assistant", "content": "record"}]},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    result = run(src, tmp_path / "out")
    rejects = {r["origin"]: (r["reason"], r["detail"]) for r in read_jsonl(result.rejects)}
    assert {int(o.rsplit(":", 1)[1]): reason for o, (reason, _) in rejects.items()} == {
        4: "ingest.same_replies", 5: "ingest.empty_reply", 6: "ingest.bad_label",
        7: "ingest.prompt_ends_with_assistant", 8: "ingest.no_prompt", 9: "ingest.wrong_type",
        11: "clean.same_replies", 12: "ingest.wrong_kind"}
    assert "label must be true" in rejects[f"{src}:6"][1] and "'maybe'" in rejects[f"{src}:6"][1]
    assert "export.format_type=preference" in rejects[f"{src}:12"][1]
    stats = result.stats
    assert stats["records_read"] == len(records) == stats["records_written"] + stats["records_rejected"]
    assert stats["records_written"] == 4 and stats["accounting_ok"]


def test_chat_export_rejects_preference_records_and_says_which_setting(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", distinct_pairs(3))
    with pytest.raises(NoConversationsError, match="export.format_type"):
        run(src, tmp_path / "out", export={"format_type": "messages"})
    detail = read_jsonl(tmp_path / "out" / "rejects.jsonl")[0]["detail"]
    assert "set export.format_type=preference" in detail


# --- cleaning and filters on every text --------------------------------------------------------------------------

def test_cleaning_applies_to_prompt_and_replies_and_keeps_the_plain_join(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        pair("Mail ann@example.org\u00a0please", "Call +1 415-555-0100  now", "See https://example.org/x ok"),
        {"prompt": "Q: mail bob@example.org?\nA: ", "chosen": " Yes\u00a0sir ", "rejected": " No"},
    ])
    conv = rows(run(src, tmp_path / "conv", export={"preference_style": "conversational"}))
    assert [conv[0]["prompt"][0]["content"], conv[0]["chosen"][0]["content"], conv[0]["rejected"][0]["content"]] \
        == ["Mail <EMAIL> please", "Call <PHONE> now", "See <URL> ok"]
    plain = run(src, tmp_path / "plain", export={"preference_style": "plain", "keep_metadata": False})
    # TRL joins a plain prompt and reply as they are: the space before the reply stays, the text is cleaned
    assert rows(plain) == [{"prompt": "Q: mail <EMAIL>?\nA: ", "chosen": " Yes sir", "rejected": " No"}]
    assert plain.stats["redactions"] == {"email": 2, "phone": 1, "url": 1}  # every text of every record read
    assert plain.stats["rejected_by_reason"] == {"export.mixed_style": 1}


def test_filters_check_the_prompt_with_each_reply(tmp_path):
    long_reply = "word " * 80
    src = write_jsonl(tmp_path / "in.jsonl", [
        pair("q1?", "fine", long_reply), pair("q2?", "fine", "buy now " * 20), pair("q3?", "fine", "also fine"),
    ])
    result = run(src, tmp_path / "out", filter={"max_chars": 200})
    rejects = read_jsonl(result.rejects)
    assert [(r["reason"], r["detail"].split(":")[0]) for r in rejects] == [
        ("filter.max_chars", "prompt + rejected"), ("filter.repetition", "prompt + rejected")]
    assert len(rows(result)) == 1


# --- dedup on the whole example ----------------------------------------------------------------------------------

def test_dedup_decides_on_the_whole_example(tmp_path):
    long_prompt = "Please explain in detail " + " ".join(f"topic{k}" for k in range(150)) + "?"
    reply = " ".join(f"step{k}" for k in range(40))
    src = write_jsonl(tmp_path / "in.jsonl", [
        pair(long_prompt, "Yes, it works.", "No idea."),
        pair(long_prompt, "It does work well.", "Not sure."),  # same long prompt, other replies: stays
        pair(long_prompt, "yes,  IT works.", "No idea."),  # the first, case and spacing aside: exact
        pair("short q?", reply, "no"),
        pair("short q?", reply + " extra", "no"),  # one word more in a long reply: near
        pair("short q?", "no", reply),  # the same replies swapped: another example, stays
        {"prompt": [{"role": "user", "content": "short q?"}], "completion": [{"role": "assistant", "content": reply}],
         "label": True},  # a KTO example is not a pair, even where its reply is the chosen one: stays
    ])
    result = run(src, tmp_path / "out", export={"preference_task": "kto"},
                 split={"train_ratio": 1.0, "validation_ratio": 0.0, "test_ratio": 0.0})
    reasons = {int(r["origin"].rsplit(":", 1)[1]): r["reason"] for r in read_jsonl(result.rejects)}
    assert reasons == {3: "dedup.exact", 5: "dedup.near"}
    assert result.stats["records_written"] == 5 and result.stats["splits"]["train"]["examples"] == 9


def test_the_same_reply_judged_good_and_bad_are_two_examples(tmp_path):
    reply = " ".join(f"word{k}" for k in range(30))
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "q?", "completion": reply, "label": v} for v in (True, False)])
    assert run(src, tmp_path / "out").stats["records_written"] == 2


# --- splits -----------------------------------------------------------------------------------------------------

def test_splits_are_grouped_by_prompt_with_exact_counts_and_seeded(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", distinct_pairs(120, per_prompt=4))  # 30 prompts, 4 pairs each
    first = run(src, tmp_path / "a", split={"train_ratio": 0.8, "validation_ratio": 0.1, "test_ratio": 0.1})
    prompts = {s: {r["prompt"][0]["content"] for r in rows(first, s)} for s in ("train", "validation", "test")}
    assert {s: len(p) for s, p in prompts.items()} == {"train": 24, "validation": 3, "test": 3}
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["validation"]
    assert {s: c["conversations"] for s, c in first.stats["splits"].items()} == {"train": 96, "validation": 12,
                                                                                  "test": 12}
    again = run(src, tmp_path / "b")
    other = run(src, tmp_path / "c", split={"seed": 7})
    assert all(first.splits[s].read_bytes() == again.splits[s].read_bytes() for s in prompts)
    assert first.splits["test"].read_bytes() != other.splits["test"].read_bytes()


# --- export and config -------------------------------------------------------------------------------------------

def test_a_mixed_file_keeps_the_first_records_layout(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        pair("q1?", "a1", "b1"), {"prompt": "q2?", "chosen": "a2", "rejected": "b2"},
        {"prompt": [{"role": "user", "content": "q3?"}], "completion": [{"role": "assistant", "content": "c"}],
         "label": True},
    ])
    result = run(src, tmp_path / "out")
    details = {r["reason"]: r["detail"] for r in read_jsonl(result.rejects)}
    assert set(details) == {"export.mixed_style", "export.mixed_kind"}
    assert f"as the first record kept, {src}:1" in details["export.mixed_kind"]
    check_records(read_records(result.splits["train"]), "dpo", "train")  # raises DataError on a mixed file
    assert len(rows(result)) == 1


def test_kto_export_writes_a_pair_as_a_good_and_a_bad_example(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [pair("q?", "good", "bad", metadata={"id": 7}),
                                              {"prompt": [{"role": "user", "content": "q2?"}],
                                               "completion": [{"role": "assistant", "content": "meh"}],
                                               "label": False}])
    out = run(src, tmp_path / "out", export={"preference_task": "kto"},
              split={"train_ratio": 1.0, "validation_ratio": 0.0, "test_ratio": 0.0})
    assert [(r["completion"][0]["content"], r["label"], r["metadata"]) for r in rows(out)] == [
        ("good", True, {"id": 7, "origin": f"{src}:1"}), ("bad", False, {"id": 7, "origin": f"{src}:1"}),
        ("meh", False, {"origin": f"{src}:2"})]
    assert out.stats["splits"]["train"] == {"conversations": 2, "examples": 3}


@pytest.mark.parametrize("sections,field", [
    ({"export": {"format_type": "preference", "multi_turn": "per_turn"}}, "export.multi_turn"),
    ({"export": {"format_type": "preference"}, "split": {"group_by": "tree"}}, "split.group_by"),
    ({"export": {"preference_task": "kto"}}, "export.preference_task"),
    ({"export": {"preference_style": "plain"}}, "export.preference_style"),
])
def test_a_configuration_that_cannot_work_names_the_field(sections, field):
    with pytest.raises(ConfigError, match=field):
        DataPipelineConfig.from_dict(sections)


def test_the_tricky_preference_set_accounts_for_every_record(tmp_path):
    src = write_preferences(tmp_path / "in.jsonl", 400, seed=1)
    result = run(src, tmp_path / "out")
    stats = result.stats
    assert stats["records_read"] == 400 and stats["accounting_ok"]
    reasons = set(stats["rejected_by_reason"])
    assert {"dedup.exact", "dedup.near", "ingest.same_replies", "ingest.bad_label", "ingest.wrong_kind",
            "export.mixed_kind", "export.mixed_style"} <= reasons
    assert sum(stats["redactions"].values()) > 10
    split_prompts = [{json.dumps(r["prompt"]) for r in rows(result, s)} for s in ("train", "validation", "test")]
    assert all(split_prompts) and not (split_prompts[0] & split_prompts[1] or split_prompts[0] & split_prompts[2])


# --- what the trainer and the evaluation read --------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("task,plain", [("dpo", False), ("kto", True)], ids=["dpo-conversational", "kto-plain"])
def test_prepared_files_train_and_evaluate_unchanged(task, plain, tiny_model_dir, tmp_path):
    """Pairs prepared for each task (kto: each pair as a good and a bad example) train 2 steps with validation and
    are evaluated on the test split, the files read as the pipeline wrote them."""
    from finetune import finetune_model
    from finetune.evaluate.__main__ import main as evaluate_main
    from tests.finetune.conftest import tiny_config

    records = distinct_pairs(40, per_prompt=2)
    if plain:
        records = [{k: r[k][0]["content"] for k in ("prompt", "chosen", "rejected")} for r in records]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    prepared = run(src, tmp_path / "prepared", export={"preference_task": task})
    splits = prepared.stats["splits"]
    assert prepared.stats["records_written"] == 40 and all(c["conversations"] for c in splits.values())
    assert isinstance(rows(prepared, "test")[0]["prompt"], str) is plain
    out = tmp_path / "run"
    finetune_model(tiny_config(tiny_model_dir, prepared.splits["train"], out, task=task, max_steps=2,
                               validation_file=str(prepared.splits["validation"]), do_eval=True,
                               generation_eval=False, lora_dropout=0.0))
    history = json.loads((out / "training_metadata.json").read_text())["history"]
    assert sum("loss" in h for h in history) == 2 and any("eval_loss" in h for h in history)
    assert evaluate_main(["--task", task, "--data", str(prepared.splits["test"]), "--models",
                          str(tiny_model_dir), str(out), "--output-dir", str(tmp_path / "eval"), "--no-plots",
                          "--dtype", "float32"]) == 0
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert "reward_accuracy" in results["runs"][1]["metrics"]


def test_token_lengths_are_those_of_the_longest_prompt_and_reply(tiny_model_dir, tmp_path):
    """Conversational records through the chat template, plain ones as TRL joins them (prompt + reply)."""
    from finetune.data.filters import count_record_tokens, count_tokens
    from finetune.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    conv = to_conversation(pair("How are you?", "Fine.", "I am fine, thank you very much for asking me."), "a:1")
    plain = to_conversation({"prompt": "Q: how?\nA:", "chosen": " well " * 9, "rejected": " ok"}, "a:2")
    longest_conv = max(count_tokens(view, tokenizer) for view in conv.views())
    longest_plain = len(tokenizer("Q: how?\nA:" + " well " * 9)["input_ids"])
    assert count_record_tokens([conv, plain], tokenizer) == [longest_conv, longest_plain]
    assert longest_conv > count_tokens(conv.views()[0], tokenizer)  # the rejected reply is the longer one

    src = write_jsonl(tmp_path / "in.jsonl", [conv.raw, pair("Who are you?", "A model.", "No.")])
    result = run(src, tmp_path / "out", filter={"tokenizer": str(tiny_model_dir), "max_tokens": longest_conv - 1})
    assert [r["reason"] for r in read_jsonl(result.rejects)] == ["filter.max_tokens"]
    assert result.stats["length_histogram"]["unit"] == "tokens" and result.stats["records_written"] == 1
