"""Evaluation end to end on the tiny model, and every bad input it must refuse:
pytest tests/finetune/evaluate/test_run.py"""

from __future__ import annotations

import json

import pytest

from finetune.evaluate import EvalConfig, EvalError, evaluate_models
from finetune.evaluate.__main__ import main as cli
from finetune.extraction import SYSTEM_PROMPT, SchemaError, to_json

LABEL = {"attributes": [{"type": "INTEREST", "value": "hiking"}], "aspects": [], "sentiment": "POSITIVE"}
# A small schema keeps the tiny random model's constrained replies short enough to always finish.
SMALL_SCHEMA = {"type": "object", "properties": {"sentiment": {"enum": ["POSITIVE", "NEGATIVE"]}},
                "required": ["sentiment"], "additionalProperties": False}


def _record(text, reply):
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text},
                         {"role": "assistant", "content": reply}]}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def extraction_file(tmp_path):
    return _write(tmp_path / "heldout.jsonl", [_record(f"I love hiking {i}", to_json(LABEL)) for i in range(3)])


@pytest.fixture
def small_schema(tmp_path):
    path = tmp_path / "small.schema.json"
    path.write_text(json.dumps(SMALL_SCHEMA))
    return path


def test_compares_two_models_and_writes_report(tiny_model_dir, extraction_file, small_schema, tmp_path):
    out = tmp_path / "report"
    results = evaluate_models(
        [str(tiny_model_dir), str(tiny_model_dir)],
        EvalConfig(task="extraction", data=str(extraction_file), max_new_tokens=24, batch_size=2,
                   schema=str(small_schema), output_dir=str(out), labels=["base", "tuned"], dtype="float32"))
    runs = {r["label"]: r for r in results["runs"]}
    assert set(runs) == {"base (free)", "base (constrained)", "tuned (free)", "tuned (constrained)"}
    constrained = runs["tuned (constrained)"]["metrics"]
    # A random tiny model writes valid, schema-conforming JSON only because decoding is constrained.
    assert constrained["json_validity"] == 100 and constrained["schema_validity"] == 100
    assert json.loads(runs["base (constrained)"]["samples"][0]["output"])["sentiment"] in ("POSITIVE", "NEGATIVE")
    assert constrained["perplexity"] > 1
    # Same model, same greedy settings: identical scores, so every delta against the base is zero.
    assert all(v == 0 for v in runs["tuned (free)"]["metrics"]["delta_vs_base"].values())
    assert (out / "eval_report.md").is_file() and (out / "metrics.png").stat().st_size > 1000
    assert "tuned (constrained)" in (out / "eval_report.md").read_text()
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["examples"] == 3
    # every reply of every run is kept, not only the report's samples, so a score can be re-derived offline
    replies = [json.loads(line) for line in (out / "eval_outputs.jsonl").read_text().splitlines()]
    assert len(replies) == 4 * 3 and {r["run"] for r in replies} == set(runs)
    assert [r["output"] for r in replies if r["run"] == "base (constrained)"][0] == \
        runs["base (constrained)"]["samples"][0]["output"]


def test_generation_task_metrics(tiny_model_dir, tmp_path):
    rows = [{"instruction": f"Say {i}", "input": "", "output": f"The number is {i}."} for i in range(3)]
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(rows))
    results = evaluate_models([str(tiny_model_dir)], EvalConfig(task="completion", data=str(data), max_new_tokens=8,
                                                                output_dir=str(tmp_path / "r"), dtype="float32"))
    metrics = results["runs"][0]["metrics"]
    for key in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match", "token_reduction_pct", "perplexity"):
        assert key in metrics
    assert "json_validity" not in metrics


def test_loss_curves_from_training_metadata(tiny_model_dir, extraction_file, small_schema, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "merged")
    history = [{"step": 5, "loss": 2.0}, {"step": 10, "loss": 1.5}, {"step": 10, "eval_loss": 1.7}]
    (run / "training_metadata.json").write_text(json.dumps({"task": "extraction", "history": history}))
    results = evaluate_models([str(run)], EvalConfig(task="extraction", data=str(extraction_file), max_new_tokens=8,
                                                     constrained="on", schema=str(small_schema), perplexity=False,
                                                     dtype="float32"))
    assert results["output_dir"] == str(run / "eval")  # next to the model
    assert (run / "eval" / "loss_curves.png").stat().st_size > 1000


# ---- bad input ---------------------------------------------------------------------------------------------------

def test_wrong_task_data_is_refused(tiny_model_dir, tmp_path):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "hi", "output": "hello"}] * 2))
    with pytest.raises(EvalError, match="look like task='completion'"):
        evaluate_models([str(tiny_model_dir)], EvalConfig(task="extraction", data=str(alpaca)))
    chat = _write(tmp_path / "chat.jsonl", [_record("hello", "Hi! How can I help?")] * 2)
    with pytest.raises(EvalError, match="not valid JSON"):
        evaluate_models([str(tiny_model_dir)], EvalConfig(task="extraction", data=str(chat)))


def test_model_tuned_for_another_task_is_refused(tiny_model_dir, extraction_file, tmp_path):
    import shutil

    run = tmp_path / "chat_run"
    shutil.copytree(tiny_model_dir, run / "merged")
    (run / "training_metadata.json").write_text(json.dumps({"task": "chat", "history": []}))
    with pytest.raises(EvalError, match="fine-tuned for task='chat'"):
        evaluate_models([str(run)], EvalConfig(task="extraction", data=str(extraction_file)))


def test_reference_that_is_not_json_names_the_line(tiny_model_dir, tmp_path):
    rows = [_record("I love hiking", to_json(LABEL)), _record("I hate rain", '{"attributes": [,]}')]
    data = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(EvalError, match=r"bad\.jsonl:2: the assistant reply is not valid JSON"):
        evaluate_models([str(tiny_model_dir)], EvalConfig(task="extraction", data=str(data)))


def test_empty_eval_set(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EvalError, match="empty eval set"):
        evaluate_models([str(tiny_model_dir)], EvalConfig(task="extraction", data=str(empty)))
    with pytest.raises(EvalError, match="empty"):
        evaluate_models([str(tiny_model_dir)], EvalConfig(task="extraction"), examples=[])


def test_schema_that_is_not_a_json_schema(tiny_model_dir, extraction_file, tmp_path):
    bad_type = tmp_path / "bad.schema.json"
    bad_type.write_text(json.dumps({"type": "objekt"}))
    with pytest.raises(SchemaError, match="not a valid JSON Schema"):
        evaluate_models([str(tiny_model_dir)], EvalConfig(task="extraction", data=str(extraction_file),
                                                          schema=str(bad_type)))
    not_json = tmp_path / "broken.schema.json"
    not_json.write_text('{"type": "object",\n "properties": }')
    with pytest.raises(SchemaError, match=r"broken\.schema\.json:2: the schema is not valid JSON"):
        evaluate_models([str(tiny_model_dir)], EvalConfig(task="extraction", data=str(extraction_file),
                                                          schema=str(not_json)))


def test_cli_reports_bad_input_with_exit_code_2(tiny_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli(["--models", str(tiny_model_dir), "--data", str(empty)]) == 2
    assert "empty eval set" in capsys.readouterr().err


def test_cli_prints_the_comparison(tiny_model_dir, extraction_file, small_schema, tmp_path, capsys):
    code = cli(["--models", str(tiny_model_dir), str(tiny_model_dir), "--labels", "base", "tuned", "--data",
                str(extraction_file), "--schema", str(small_schema), "--max-new-tokens", "8", "--constrained", "on",
                "--no-perplexity", "--no-plots", "--dtype", "float32", "--out", str(tmp_path / "o")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "tuned (constrained)" in printed and "JSON valid %" in printed


def test_evaluate_after_training_compares_base_and_run(tiny_model_dir, extraction_file, tmp_path, capsys):
    import shutil

    from finetune import (
        DataArguments,
        FinetuningArguments,
        ModelArguments,
        TextGenerationFinetuningConfig,
        TrainingArguments,
    )
    from finetune.evaluate import evaluate_after_training

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "merged")
    (run / "training_metadata.json").write_text(json.dumps({"task": "extraction", "history": [{"step": 1,
                                                                                                 "loss": 1.0}]}))
    config = TextGenerationFinetuningConfig(
        ModelArguments(model_name_or_path=str(tiny_model_dir)),
        DataArguments(train_file=str(extraction_file), validation_file=str(extraction_file), max_eval_samples=2),
        TrainingArguments(output_dir=str(run), report_to="none"),
        FinetuningArguments(task="extraction"))
    from finetune.evaluate import EvalConfig

    results = evaluate_after_training(run, config, EvalConfig(task="extraction", max_examples=2, max_new_tokens=4,
                                                              base_few_shot=3, labels=["base", "fine-tuned"],
                                                              output_dir=str(run / "eval"), dtype="float32"))
    assert results["examples"] == 2
    assert [r["label"] for r in results["runs"]] == ["base (free)", "base (constrained)", "fine-tuned (free)",
                                                     "fine-tuned (constrained)"]
    assert results["runs"][0]["few_shot"] == 3 and results["runs"][2]["few_shot"] == 0
    assert (run / "eval" / "eval_report.md").is_file() and (run / "eval" / "loss_curves.png").is_file()
    assert "fine-tuned (constrained)" in capsys.readouterr().out  # the comparison is printed


def test_evaluate_after_training_without_heldout_data_skips(tiny_model_dir, extraction_file, tmp_path):
    from finetune import DataArguments, FinetuningArguments, TextGenerationFinetuningConfig, TrainingArguments
    from finetune.evaluate import evaluate_after_training

    config = TextGenerationFinetuningConfig(data_args=DataArguments(train_file=str(extraction_file)),
                                            training_args=TrainingArguments(output_dir=str(tmp_path), report_to="none"),
                                            finetune_args=FinetuningArguments(task="extraction"))
    assert evaluate_after_training(tmp_path, config) is None


def test_a_model_fine_tuned_to_call_a_tool_is_scored_on_its_calls(tmp_path):
    """Gemma 4's calls are special tokens: the prompt carries the tools, the replies are read with them kept, and
    the taught model's call is exact where the untaught base calls nothing."""
    from tests.families import build_family_model
    from tests.neural_chat_app.test_tool_calling_families import CALLED, QUESTION, _teach
    from tests.neural_chat_app.test_tool_formats import TOOLS, _tokenizer

    tuned = _teach("gemma4", tmp_path / "tuned")
    tokenizer = _tokenizer("gemma4")
    build_family_model("qwen3", tokenizer).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(CALLED)}}
    data = _write(tmp_path / "heldout.jsonl", [{"messages": [{"role": "user", "content": QUESTION}, {
        "role": "assistant", "content": "", "tool_calls": [call]}], "tools": TOOLS}])
    results = evaluate_models([str(tmp_path / "base"), str(tuned)], EvalConfig(
        task="chat", data=str(data), max_new_tokens=60, output_dir=str(tmp_path / "r"), labels=["base", "tuned"],
        dtype="float32", plots=False))
    base, taught = (r["metrics"] for r in results["runs"])
    assert (taught["tool_call_rate"], taught["tool_call_exact"]) == (100, 100)
    assert base["tool_call_exact"] == 0 and taught["delta_vs_base"]["tool_call_exact"] == 100
    assert "exact call %" in (tmp_path / "r" / "eval_report.md").read_text()
    replies = [json.loads(line) for line in (tmp_path / "r" / "eval_outputs.jsonl").read_text().splitlines()]
    assert "<|tool_call>call:get_weather{" in replies[-1]["written"]  # the call as written, beside its words


def test_a_conversational_completion_s_last_reply_is_asked_after_its_calls_and_results():
    """TRL's conversational prompt-completion record whose completion calls a tool, reads the result and answers:
    the reference is the answer, asked after the call and the result, as for a messages record; a completion that
    is one call has the call as its reference."""
    from finetune.evaluate.data import examples_from_records
    from finetune.records import Record

    ask = [{"role": "user", "content": "Weather in Paris?"}]
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    called = {"role": "assistant", "content": "", "tool_calls": [call]}
    result = {"role": "tool", "tool_call_id": "c1", "content": "21 C"}
    answer = {"role": "assistant", "content": "It is 21 C."}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    whole, first = examples_from_records([
        Record({"prompt": ask, "completion": [called, result, answer], "tools": tools}, "h.jsonl:1"),
        Record({"prompt": ask, "completion": [called], "tools": tools}, "h.jsonl:2")], "chat", "h.jsonl")
    assert whole.messages == [*ask, called, result] and whole.reference == "It is 21 C."
    assert whole.reference_calls is None and whole.tools == tools
    assert first.messages == ask and first.reference_calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
