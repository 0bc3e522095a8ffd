"""The improvement loop: chat log -> data -> fine-tune -> evaluate -> promote -> quantize, resumable per step.

pytest tests/neural_chat_app/test_improve.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neural_chat_app import improve
from neural_chat_app.chatlog import ChatLog

DEMO = Path(__file__).resolve().parents[2] / "examples" / "data" / "aurora_support.jsonl"


def _log(path: Path, n: int, feedback: int = 1) -> Path:
    """A conversation log as the server writes it, from the demo conversations, each rated `feedback`; in every
    third the user regenerated a first, unhelpful reply (a DPO pair)."""
    log = ChatLog(path)
    rows = [json.loads(line) for line in DEMO.read_text().splitlines()][:n]
    for i, row in enumerate(rows):
        session = f"s{i}"
        log.ensure_session(session, model="smollm2-135m-instruct")
        for m in row["messages"]:
            replaced = None
            if m["role"] == "assistant" and i % 3 == 0:
                replaced = log.add_message(session, "assistant", f"I cannot help with that ({i}).", "smollm2")
            message_id = log.add_message(session, m["role"], m["content"], "smollm2-135m-instruct",
                                         replaces=replaced)
        log.set_feedback(message_id, feedback if i % 5 else -1)  # every fifth conversation got a thumbs down
    log.close()
    return path


def _config(tmp_path, model, finetune=None, **kw) -> improve.LoopConfig:
    values = dict(
        run_dir=str(tmp_path / "run"), chat_log=str(_log(tmp_path / "chat.sqlite", 60)), base_model=str(model),
        models_dir=str(tmp_path / "models"), min_conversations=10, eval_examples=4, min_pairs=5,
        finetune={"max_steps": 12, "per_device_train_batch_size": 4, "learning_rate": 0.003, "lora_all_linear": True,
                  "save_steps": 4, "disable_tqdm": True, "max_seq_length": 256, **(finetune or {})},
        preference_finetune={"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 0.003,
                             "lora_all_linear": True, "save_steps": 2, "disable_tqdm": True, "max_seq_length": 256})
    return improve.LoopConfig(**{**values, **kw})


def test_config_names_unknown_keys_and_needs_one_source(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("chat_log: x.db\nlearning_rte: 1\n")
    with pytest.raises(ValueError, match="unknown key.*learning_rte"):
        improve.LoopConfig.from_yaml(path)
    with pytest.raises(ValueError, match="exactly one of chat_log"):
        improve.LoopConfig()


@pytest.mark.parametrize(("section", "message"), [
    ("finetune:\n  lerning_rate: 0.001\n", "unknown key 'finetune.lerning_rate'; did you mean 'learning_rate'"),
    ("finetune:\n  lora_rank: four\n", "finetune.lora_rank must be int, got str 'four'"),
    ("finetune:\n  train_file: mine.jsonl\n", "finetune.train_file is set by the loop for each run: use chat_log"),
    ("quantize:\n  bitz: 8\n", "unknown key 'quantize.bitz'; did you mean 'bits'"),
    ("quantize:\n  backend: tensorrt\n", "quantize.backend='tensorrt' is not valid; choose one of: inc, openvino"),
])
def test_a_typo_in_the_finetune_or_quantize_section_fails_when_the_config_loads(tmp_path, section, message):
    path = tmp_path / "loop.yaml"
    path.write_text("chat_log: x.db\n" + section)
    with pytest.raises(ValueError, match=f"loop.yaml: {message}"):
        improve.LoopConfig.from_yaml(path)


def test_the_shipped_loop_config_is_typed():
    from finetune import TextGenerationFinetuningConfig
    from quantize.config import QuantizeConfig

    config = improve.LoopConfig.from_yaml(Path(__file__).parents[2] / "configs" / "improve.yaml",
                                          ["finetune.learning_rate=1e-4", "quantize.bits=4", "quantize.ratio=0.9"])
    assert isinstance(config.finetune, TextGenerationFinetuningConfig) and isinstance(config.quantize, QuantizeConfig)
    ft = config.finetune
    assert (ft.finetune_args.task, ft.finetune_args.lora_rank, ft.finetune_args.generation_eval) == ("chat", 16, False)
    assert (ft.training_args.learning_rate, ft.training_args.num_train_epochs, ft.training_args.seed) == (1e-4, 2, 42)
    assert (config.quantize.backend, config.quantize.bits, config.quantize.ratio) == ("openvino", 4, 0.9)


def test_the_finetune_step_runs_the_typed_config_without_a_yaml_file(tmp_path, monkeypatch):
    import types

    import finetune.train

    seen = []
    monkeypatch.setattr(finetune.train, "finetune_model",
                        lambda config: seen.append(config) or types.SimpleNamespace(output_dir="o", metrics={}))
    config = improve.LoopConfig(data_dir=str(tmp_path), finetune={"lora_rank": 4, "max_steps": 3})
    improve._finetune(config, {"splits": {"train": "t.jsonl"}}, "base-model", tmp_path / "run" / "model")
    run = seen[0]
    assert run.model_args.model_name_or_path == "base-model" and run.data_args.train_file == "t.jsonl"
    assert run.training_args.output_dir == str(tmp_path / "run" / "model") and not run.training_args.do_eval
    assert (run.finetune_args.lora_rank, run.training_args.max_steps, run.training_args.do_train) == (4, 3, True)
    assert config.finetune.training_args.output_dir != run.training_args.output_dir  # the config is left as it was
    assert list((tmp_path / "run").iterdir()) == []  # no YAML round trip


def test_too_few_conversations_stops_with_counts(tmp_path, tiny_model_dir):
    config = _config(tmp_path, tiny_model_dir, min_conversations=1000, min_pairs=1000)
    with pytest.raises(ValueError, match="conversations passed the filters.*min_conversations=1000.*"
                                         "Only 16 pairs for dpo.*min_pairs=1000"):
        improve.run_loop(config)


@pytest.mark.integration
def test_a_killed_loop_resumes_without_redoing_finished_steps(tmp_path, tiny_model_dir, monkeypatch):
    config = _config(tmp_path, tiny_model_dir, quantize=None)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during evaluation")

    real_evaluate = improve._evaluate
    monkeypatch.setattr(improve, "_evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        improve.run_loop(config)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert set(state["steps"]) == {"collect", "prepare", "finetune", "preference"}
    assert state["steps"]["collect"]["conversations_written"] == 48  # thumbs-down conversations are left out
    # DPO starts from the SFT model: the pairs of the regenerated replies whose kept reply was not disliked
    assert state["steps"]["collect"]["preference"]["pairs_written"] == 16
    assert state["steps"]["preference"]["base"] == state["steps"]["finetune"]["output_dir"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished step ran again")

    for step in ("_collect", "_prepare", "_finetune"):
        monkeypatch.setattr(improve, step, must_not_run)
    monkeypatch.setattr(improve, "_evaluate", real_evaluate)
    state = improve.run_loop(config)
    assert set(state["steps"]) == {"collect", "prepare", "finetune", "preference", "evaluate", "promote"}
    evaluated = state["steps"]["evaluate"]
    assert evaluated["metric"] == "perplexity" and evaluated["candidate"] > 0
    assert Path(evaluated["sft"]["report"]).is_file() and Path(evaluated["preference"]["report"]).is_file()
    # the gate: the SFT metric and the held-out pairs, both models' numbers kept
    assert [r["rule"].split()[0] for r in evaluated["rules"]] == ["perplexity", "reward_accuracy", "reward_margin"]
    assert evaluated["preference"]["current"]["reward_accuracy"] == 0  # the reference of the rewards
    promoted = improve.promoted(tmp_path / "models")
    assert (promoted is not None) == evaluated["better"] == state["steps"]["promote"]["promoted"]


@pytest.mark.integration
@pytest.mark.slow
def test_loop_end_to_end_on_the_embedded_model(tmp_path, monkeypatch):
    from finetune.models import DEFAULT_MODEL, cache_home, resolve_model_path
    from neural_chat_app.registry import list_models

    # promoted.json and the registry live in the home; the embedded model's conversion is shared, not made twice
    converted = Path(resolve_model_path(DEFAULT_MODEL))
    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path / "home"))
    (cache_home() / "models").mkdir(parents=True)
    (cache_home() / "models" / DEFAULT_MODEL).symlink_to(converted, target_is_directory=True)

    # the loop's own default (OpenVINO INT8); the artifact's quality measurement has its own test on this model
    # (tests/quantize/test_embedded_integration.py)
    quantize = {"backend": "openvino", "scheme": "rtn", "bits": 8, "evaluate": False}
    # the demo config's rate: its held-out loss falls from the first steps (configs/demo_aurora.yaml)
    # SFT only: SFT then DPO runs on the tiny model (test_a_killed_loop_resumes_without_redoing_finished_steps)
    config = _config(tmp_path, DEFAULT_MODEL, min_improvement=-1e9, quantize=quantize,  # promote whatever the score
                     eval_examples=2, finetune={"learning_rate": 2e-3, "max_steps": 6, "save_steps": 3},
                     preference=None)
    config.models_dir = None
    state = improve.run_loop(config)
    steps = state["steps"]
    assert steps["finetune"]["metrics"]["eval_loss"] < steps["finetune"]["metrics"]["eval_loss_before"]
    assert steps["promote"]["promoted"] and steps["promote"]["model"] == steps["finetune"]["output_dir"]
    assert (cache_home() / "models" / "promoted.json").is_file()
    artifact = Path(steps["quantize"]["artifact"])
    assert json.loads((artifact / "quantization.json").read_text())["bits"] == 8
    assert any(e.id == "promoted" for e in list_models())
    # a second run finds everything done
    again = improve.run_loop(config)
    assert again["steps"]["quantize"]["finished"] == steps["quantize"]["finished"]


def test_sft_data_never_holds_a_disliked_reply_even_with_min_feedback_null(tmp_path):
    config = improve.LoopConfig(chat_log=str(_log(tmp_path / "chat.sqlite", 20)), min_feedback=None)
    collected = improve._collect(config, tmp_path / "collect", None)
    records = [json.loads(line) for line in Path(collected["input"]).read_text().splitlines()]
    # every fifth conversation's only reply got a thumbs down: nothing of it is left to train on
    assert collected["conversations_written"] == len(records) == 16
    assert collected["conversations_cut_at_a_disliked_reply"] == 4
    assert all(-1 not in r["metadata"]["turn_feedback"] for r in records)


@pytest.mark.integration
def test_kto_alone_when_the_thumbs_are_enough_and_the_liked_chats_are_not(tmp_path, tiny_model_dir):
    log = ChatLog(tmp_path / "chat.sqlite")
    for i in range(10):  # one rated reply each, up and down in turn
        log.ensure_session(f"s{i}")
        log.add_message(f"s{i}", "user", f"Question {i}?")
        log.set_feedback(log.add_message(f"s{i}", "assistant", f"Answer {i}."), 1 if i % 2 else -1)
    log.close()
    config = improve.LoopConfig(
        run_dir=str(tmp_path / "run"), chat_log=str(tmp_path / "chat.sqlite"), base_model=str(tiny_model_dir),
        models_dir=str(tmp_path / "models"), min_conversations=100, preference="kto", min_rated_replies=8,
        preference_heldout=0.4, quantize=None,
        preference_finetune={"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 0.01,
                             "save_steps": 2, "max_seq_length": 64, "disable_tqdm": True})
    steps = improve.run_loop(config)["steps"]
    assert steps["collect"]["preference"]["rated_replies_written"] == 10
    assert "skipped" in steps["finetune"] and steps["preference"]["base"] == str(tiny_model_dir)
    pref = steps["evaluate"]["preference"]
    held_out = steps["prepare"]["preference"]["counts"]["test"]  # the data pipeline's split, grouped by prompt
    assert pref["task"] == "kto" and pref["candidate"]["examples"] == held_out > 0
    assert steps["promote"]["promoted"] == all(r["holds"] for r in steps["evaluate"]["rules"])
