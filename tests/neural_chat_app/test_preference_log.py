"""The chat log as preference data: KTO and DPO rows from thumbs, regenerations and edits; SFT exports that never
train on a disliked or replaced reply; the improve loop's gate rule.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/neural_chat_app/test_preference_log.py
"""

from __future__ import annotations

import json

import pytest

from neural_chat_app import improve
from neural_chat_app.__main__ import main as cli
from neural_chat_app.chatlog import ChatLog
from neural_chat_app.export_log import export_jsonl, export_preferences

SYSTEM = {"role": "system", "content": "Be brief."}


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


@pytest.fixture
def log_file(tmp_path):
    """Two conversations: one regenerated, edited, rated and continued; one disliked then liked."""
    log = ChatLog(tmp_path / "log.sqlite")
    log.ensure_session("a", "m", "warranty")
    log.add_message("a", "system", SYSTEM["content"])
    log.add_message("a", "user", "How long is the warranty?")
    first = log.add_message("a", "assistant", "Ten years.", "m")
    log.set_feedback(first, -1)
    second = log.add_message("a", "assistant", "Two years, I think.", "m", replaces=first)  # regenerated
    log.set_feedback(second, 1)
    edited = log.edit_reply(second, "Two years on the frame.")  # the user wrote the reply they wanted
    log.add_message("a", "user", "And the battery?")
    same = log.add_message("a", "assistant", "One year.", "m")
    log.add_message("a", "assistant", "One year.", "m", replaces=same)  # same text twice: no pair
    log.ensure_session("b", "m", "hello")
    log.add_message("b", "user", "hi")
    bad = log.add_message("b", "assistant", "Go away.", "m")
    log.set_feedback(bad, -1)
    log.add_message("b", "user", "please help")
    good = log.add_message("b", "assistant", "Sure, how can I help?", "m")
    log.set_feedback(good, 1)
    log.close()
    return tmp_path / "log.sqlite", {"first": first, "second": second, "edited": edited}


def test_dpo_rows_pair_the_kept_reply_with_each_replaced_one(log_file, tmp_path):
    path, _ = log_file
    counts = export_preferences(path, tmp_path / "dpo.jsonl", "dpo")
    rows = _read(tmp_path / "dpo.jsonl")
    prompt = [SYSTEM, _msg("user", "How long is the warranty?")]
    kept = [_msg("assistant", "Two years on the frame.")]
    assert rows == [
        {"prompt": prompt, "chosen": kept, "rejected": [_msg("assistant", "Ten years.")]},
        # the regenerated reply the user then edited away, although it had a thumbs up: left out (contradiction)
    ]
    assert counts["pairs_written"] == 1 and counts["pairs_left_out"] == 2  # the liked one, and "One year." twice


def test_a_reply_cut_off_mid_stream_is_no_side_of_a_pair(tmp_path):
    log = ChatLog(tmp_path / "log.sqlite")
    log.ensure_session("s")
    log.add_message("s", "user", "Explain gears.")
    first = log.add_message("s", "assistant", "Gears trade speed for force.")
    log.add_message("s", "assistant", "Gears are", metadata={"interrupted": True}, replaces=first)  # stopped
    log.close()
    counts = export_preferences(tmp_path / "log.sqlite", tmp_path / "dpo.jsonl", "dpo")
    assert (counts["pairs_written"], counts["pairs_left_out"]) == (0, 1)


def test_kto_rows_are_every_rated_reply_with_the_prompt_before_its_turn(log_file, tmp_path):
    path, _ = log_file
    counts = export_preferences(path, tmp_path / "kto.jsonl", "kto")
    rows = _read(tmp_path / "kto.jsonl")
    warranty = [SYSTEM, _msg("user", "How long is the warranty?")]
    assert rows == [
        {"prompt": warranty, "completion": [_msg("assistant", "Ten years.")], "label": False},
        {"prompt": warranty, "completion": [_msg("assistant", "Two years, I think.")], "label": True},
        {"prompt": [_msg("user", "hi")], "completion": [_msg("assistant", "Go away.")], "label": False},
        {"prompt": [_msg("user", "hi"), _msg("assistant", "Go away."), _msg("user", "please help")],
         "completion": [_msg("assistant", "Sure, how can I help?")], "label": True},
    ]
    assert counts["rated_replies_written"] == 4 and counts["conversations_with_them"] == 2


def test_the_rows_train_as_they_are(log_file, tmp_path):
    """What finetune_model(task="dpo"/"kto") checks before a model loads accepts the exported rows."""
    from finetune.records import check_records, read_records

    path, _ = log_file
    for kind in ("dpo", "kto"):
        export_preferences(path, tmp_path / f"{kind}.jsonl", kind)
        check_records(read_records(str(tmp_path / f"{kind}.jsonl")), kind, f"{kind}.jsonl")


def test_sft_export_keeps_the_kept_replies_and_cuts_before_a_disliked_one(log_file, tmp_path):
    path, _ = log_file
    export_jsonl(path, tmp_path / "all.jsonl")
    whole = {r["metadata"]["session_id"]: r["messages"] for r in _read(tmp_path / "all.jsonl")}
    assert [m["content"] for m in whole["a"]] == ["Be brief.", "How long is the warranty?", "Two years on the frame.",
                                                  "And the battery?", "One year."]  # no replaced reply
    counts = export_jsonl(path, tmp_path / "sft.jsonl", cut_disliked=True)
    cut = {r["metadata"]["session_id"]: r["messages"] for r in _read(tmp_path / "sft.jsonl")}
    assert cut["a"] == whole["a"]  # its disliked reply was replaced: nothing to cut
    assert "b" not in cut  # its first reply was disliked: nothing before it to train on
    assert counts["conversations_cut_at_a_disliked_reply"] == 1 and counts["conversations_skipped"] == 1


def test_export_log_command_writes_each_format(log_file, tmp_path, capsys):
    path, _ = log_file
    assert cli(["export-log", "--db", str(path), "--format", "dpo", "--output", str(tmp_path / "p.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["pairs_written"] == 1
    assert cli(["export-log", "--db", str(path), "--format", "kto", "--min-feedback", "1",
                "--output", str(tmp_path / "k.jsonl")]) == 2
    assert "apply to --format messages only" in capsys.readouterr().err


def _config(tmp_path, **kw) -> improve.LoopConfig:
    return improve.LoopConfig(chat_log=str(tmp_path / "x.sqlite"), **kw)


def test_the_gate_promotes_only_when_every_measured_rule_holds(tmp_path):
    config = _config(tmp_path, min_improvement=0.5, min_reward_accuracy=60.0, min_reward_margin=0.0)
    sft = {"metric": "perplexity", "current": 10.0, "candidate": 9.0}  # lower is better: a gain of 1.0
    pref = {"task": "dpo", "current": {"reward_accuracy": 0.0, "reward_margin": 0.0},
            "candidate": {"reward_accuracy": 75.0, "reward_margin": 0.4}}
    assert improve.gate(config, sft, pref)["better"]
    worse = {**pref, "candidate": {"reward_accuracy": 75.0, "reward_margin": -0.1}}
    decision = improve.gate(config, sft, worse)
    assert not decision["better"] and [r["holds"] for r in decision["rules"]] == [True, True, False]
    assert not improve.gate(config, {**sft, "candidate": 9.8}, pref)["better"]  # gain 0.2 < 0.5
    assert not improve.gate(config, sft, {**pref, "candidate": {"reward_accuracy": 50.0, "reward_margin": 1}})[
        "better"]
    assert improve.gate(config, None, pref)["better"]  # preference only: its rules decide
    kto = {**pref, "candidate": {"reward_accuracy": 80.0, "reward_margin": None}}  # held-out labels all one way
    assert not improve.gate(config, None, kto)["better"]
    assert not improve.gate(config, None, None)["better"]  # nothing measured, nothing promoted


def test_preference_settings_are_checked_when_the_config_loads(tmp_path):
    config = _config(tmp_path, preference="kto", preference_finetune={"beta": 0.2, "max_steps": 3})
    ft = config.preference_finetune
    assert (ft.finetune_args.task, ft.training_args.max_steps, ft.training_args.do_eval) == ("kto", 3, False)
    with pytest.raises(ValueError, match="preference_finetune.task is set by the loop"):
        _config(tmp_path, preference_finetune={"task": "chat"})
    with pytest.raises(ValueError, match="min_pairs must be at least 1"):
        _config(tmp_path, min_pairs=0)


# --- replies that call tools ---------------------------------------------------------------------------------------

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "required": ["city"],
                                                           "properties": {"city": {"type": "string"}}}}}


def _call(city: str, call_id: str) -> dict:
    return {"id": call_id, "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}


def log_tool_turns(log: ChatLog, session: str, city: str, wrong: str) -> None:
    """A user asks for `city`'s weather: the model called it for `wrong`, was regenerated to call it for `city`,
    then answered the tool's result, regenerated away from a reply that ignored it. Logged as the server logs
    them: calls, results and the tools offered in the replies' metadata."""
    log.ensure_session(session, "m", "weather")
    log.add_message(session, "user", f"Weather in {city}?")
    offered = {"tools": [WEATHER]}
    bad = log.add_message(session, "assistant", "", "m", metadata={"tool_calls": [_call(wrong, "c0")], **offered})
    log.set_feedback(bad, -1)
    log.add_message(session, "assistant", "", "m", replaces=bad,
                    metadata={"tool_calls": [_call(city, "c1")], **offered})
    result = {"tool_results": [{"tool_call_id": "c1", "content": "21 C"}], **offered}
    ignored = log.add_message(session, "assistant", "I cannot know the weather.", "m", metadata=result)
    log.add_message(session, "assistant", f"It is 21 C in {city}.", "m", replaces=ignored, metadata=result)


def test_tool_calling_replies_pair_by_their_calls_with_the_results_in_the_prompt(tmp_path):
    """A reply that only called a tool is no empty reply: the pair compares its call with the replaced one, and the
    reply after the result is asked with the call and the result before it, and the tools offered."""
    from finetune.records import Record, check_records

    log = ChatLog(tmp_path / "log.sqlite")
    log_tool_turns(log, "w", "Paris", "Lyon")
    log.close()
    counts = export_preferences(tmp_path / "log.sqlite", tmp_path / "dpo.jsonl", "dpo")
    assert counts["pairs_written"] == 2 and counts["pairs_left_out"] == 0
    first, second = _read(tmp_path / "dpo.jsonl")
    ask = _msg("user", "Weather in Paris?")
    called = {"role": "assistant", "content": "", "tool_calls": [_call("Paris", "c1")]}
    assert first == {"prompt": [ask], "chosen": [called],
                     "rejected": [{"role": "assistant", "content": "", "tool_calls": [_call("Lyon", "c0")]}],
                     "tools": [WEATHER]}
    assert second == {"prompt": [ask, called, {"role": "tool", "tool_call_id": "c1", "content": "21 C"}],
                      "chosen": [_msg("assistant", "It is 21 C in Paris.")],
                      "rejected": [_msg("assistant", "I cannot know the weather.")], "tools": [WEATHER]}
    check_records([Record(r, f"dpo.jsonl:{i}") for i, r in enumerate((first, second), 1)], "dpo", "dpo.jsonl")
    export_preferences(tmp_path / "log.sqlite", tmp_path / "kto.jsonl", "kto")
    (rated,) = _read(tmp_path / "kto.jsonl")  # the thumbs-down call
    assert rated["completion"][0]["tool_calls"] == [_call("Lyon", "c0")] and rated["label"] is False
