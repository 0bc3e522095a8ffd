"""Preference tuning (task dpo / kto through TRL's trainers) on the tiny model: training, run folder, resume, bad
records, the padding-free forward against TRL's own, and the preference metric against a direct computation.

pytest -m "" tests/finetune/test_preference.py
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from finetune import FinetuningArguments, finetune_model
from finetune.records import DataError, check_records, read_records
from tests.finetune.conftest import tiny_config, write_jsonl

SYSTEM = {"role": "system", "content": "Answer with the number."}


def _pairs(n: int = 24) -> list[dict]:
    return [{"prompt": [SYSTEM, {"role": "user", "content": f"what is {i}?" + " please" * (i % 3)}],
             "chosen": [{"role": "assistant", "content": f"It is {i}."}],
             "rejected": [{"role": "assistant", "content": "I do not know" + " at all" * (i % 4)}]} for i in range(n)]


def _unpaired(n: int = 24) -> list[dict]:
    return [{"prompt": f"what is {i}? ", "completion": f"It is {i}." if i % 2 else "no idea", "label": bool(i % 2)}
            for i in range(n)]


@pytest.fixture
def dpo_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", _pairs())


@pytest.fixture
def kto_file(tmp_path):
    return write_jsonl(tmp_path / "unpaired.jsonl", _unpaired())


def _config(model_dir, data, out, task, **overrides):
    settings = {"max_steps": 6, "learning_rate": 5e-3, "lora_dropout": 0.0, "do_eval": True,
                "validation_split_percentage": 20, "generation_eval": False} | overrides
    return tiny_config(model_dir, data, out, task=task, **settings)


def _history(out) -> list[dict]:
    return json.loads((out / "training_metadata.json").read_text())["history"]


# --- training end to end ----------------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("task,data,settings", [
    ("dpo", "dpo_file", {}), ("kto", "kto_file", {}), ("dpo", "dpo_file", {"precompute_ref_log_probs": True}),
], ids=["dpo", "kto", "dpo-precomputed-reference"])
def test_preference_task_trains_and_writes_the_run_folder_sft_writes(task, data, settings, tiny_model_dir, tmp_path,
                                                                     request):
    out = tmp_path / "out"
    result = finetune_model(_config(tiny_model_dir, request.getfixturevalue(data), out, task, **settings))

    losses = [h["loss"] for h in _history(out) if "loss" in h]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert result.metrics["train_steps"] == 6 and result.metrics["eval_reward_margin"] > 0
    assert result.metrics["train_tokens_per_s"] > 0
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)  # B starts at zero: the adapter learned
    assert (out / "merged" / "config.json").is_file() and (out / "adapter" / "tokenizer_config.json").is_file()
    meta = json.loads((out / "training_metadata.json").read_text())
    assert meta["task"] == task and meta["method"] == "lora" and meta["precision"] in ("bf16", "fp32")
    assert meta["data"]["train_examples"] > 0 and meta["data"]["sha256"] and meta["config"]["finetune_args"]["beta"]
    assert result.adapter_dir == out / "adapter" and result.merged_dir == out / "merged"


@pytest.mark.integration
def test_generation_eval_compares_base_and_tuned_on_held_out_pairs(tiny_model_dir, dpo_file, tmp_path):
    out = tmp_path / "out"
    finetune_model(_config(tiny_model_dir, dpo_file, out, "dpo", generation_eval=True))
    results = json.loads((out / "eval" / "eval_results.json").read_text())
    base, tuned = (run["metrics"] for run in results["runs"])
    assert base["reward_accuracy"] == 0 and base["reward_margin"] == 0  # the base is its own reference
    assert tuned["reward_margin"] > 0 and tuned["chosen_logp"] - tuned["rejected_logp"] > \
        base["chosen_logp"] - base["rejected_logp"]
    assert "reward acc %" in (out / "eval" / "eval_report.md").read_text()


@pytest.mark.integration
def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_model_dir, dpo_file, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    finetune_model(_config(tiny_model_dir, dpo_file, straight, "dpo", max_steps=8, save_steps=4))
    # the folder a run killed after its step-4 checkpoint leaves
    shutil.copytree(straight, resumed, ignore=shutil.ignore_patterns("checkpoint-8", "adapter", "merged", "eval",
                                                                    "training_metadata.json"))
    result = finetune_model(_config(tiny_model_dir, dpo_file, resumed, "dpo", max_steps=8, save_steps=4))
    assert result.metrics["train_steps"] == 8
    assert [h["step"] for h in _history(resumed) if "loss" in h] == list(range(1, 9))
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-4 for k in a)
    again = finetune_model(_config(tiny_model_dir, dpo_file, resumed, "dpo", max_steps=8, save_steps=4))
    assert again.metrics == result.metrics  # the finished run is returned, not trained again


# --- bad data ---------------------------------------------------------------------------------------------------

def test_a_malformed_preference_record_is_named_by_its_line(tmp_path):
    rows = _pairs(4)
    rows[1] = {"prompt": rows[1]["prompt"], "chosen": rows[1]["chosen"]}  # line 2: no rejected reply
    rows[2]["rejected"] = rows[2]["chosen"]  # line 3: nothing to prefer
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError) as err:
        check_records(read_records(path), "dpo", str(path))
    assert f"{path}:2: missing rejected" in str(err.value)
    assert f"{path}:3: chosen and rejected are the same conversation" in str(err.value)


@pytest.mark.parametrize("row,message", [
    ({"prompt": "q", "completion": "a", "label": "maybe"}, "'label' must be true"),
    ({"prompt": [SYSTEM], "completion": "a", "label": True}, "must all be strings or all be lists"),
    ({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": "a"}], "label": True},
     "completion must continue the prompt with an assistant reply"),
])
def test_a_bad_kto_record_says_what_to_change(tmp_path, row, message):
    path = write_jsonl(tmp_path / "kto.jsonl", [_unpaired(2)[0], row])
    with pytest.raises(DataError, match=f"{path}:2: .*{message}"):
        check_records(read_records(path), "kto", str(path))


def test_an_implicit_prompt_pair_needs_shared_first_turns(tmp_path):
    good = {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "right"}],
            "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "wrong"}]}
    bad = {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "right"}],
           "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "wrong"}]}
    explicit = _pairs(1)[0]  # a file may mix explicit and implicit prompts
    path = write_jsonl(tmp_path / "implicit.jsonl", [explicit, good, bad])
    with pytest.raises(DataError, match=f"{path}:3: chosen and rejected share no first turn"):
        check_records(read_records(path), "dpo", str(path))
    from finetune.preference import preference_rows

    check_records(read_records(path)[:2], "dpo", str(path))
    assert preference_rows(read_records(path)[:2]) == [explicit, {
        "prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "right"}],
        "rejected": [{"role": "assistant", "content": "wrong"}]}]


def test_preference_data_under_an_sft_task_points_to_the_preference_task(tmp_path, dpo_file, kto_file):
    with pytest.raises(DataError, match="task='dpo'"):
        check_records(read_records(dpo_file), "chat", str(dpo_file))
    with pytest.raises(DataError, match="(?s)KTO's unpaired preference format.*task='kto'"):
        check_records(read_records(kto_file), "completion", str(kto_file))


def test_a_csv_preference_file_reads_its_labels(tmp_path):
    from finetune.preference import preference_rows

    path = tmp_path / "kto.csv"
    path.write_text("prompt,completion,label\nq1,good,true\nq2,bad,False\nq3,good,1\n")
    records = read_records(path)
    check_records(records, "kto", str(path))
    assert [row["label"] for row in preference_rows(records)] == [True, False, True]


@pytest.mark.integration
def test_bad_preference_data_fails_before_a_model_loads(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [*_pairs(3), {"prompt": "q", "chosen": "a", "rejected": ""}])
    with pytest.raises(DataError, match=f"{path}:4: rejected must not be empty"):
        finetune_model(_config(tiny_model_dir, path, tmp_path / "out", "dpo"))


def test_preference_tasks_refuse_what_they_cannot_train():
    with pytest.raises(ValueError, match="trains LoRA adapters only"):
        FinetuningArguments(task="dpo", full_finetune=True)
    with pytest.raises(ValueError, match="beta must be a positive number"):
        FinetuningArguments(task="kto", beta=0)


# --- against TRL --------------------------------------------------------------------------------------------------

def _trl_trainer(tiny_model_dir, task, tmp_path):
    """TRL's own trainer on the tiny model in fp32, with a LoRA adapter that is not zero (so policy != reference)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from finetune.models import load_model, load_tokenizer

    rows = _pairs(8) if task == "dpo" else [{**r, "prompt": [{"role": "user", "content": r["prompt"]}],
                                             "completion": [{"role": "assistant", "content": r["completion"]}]}
                                            for r in _unpaired(8)]
    config_cls, trainer_cls = (DPOConfig, DPOTrainer) if task == "dpo" else (KTOConfig, KTOTrainer)
    args = config_cls(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, use_cpu=True, bf16=False,
                      gradient_checkpointing=False, report_to="none")
    model = load_model(str(tiny_model_dir), dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False)
    return trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows),
                       processing_class=load_tokenizer(str(tiny_model_dir)), peft_config=lora)


@pytest.mark.integration
@pytest.mark.parametrize("task", ["dpo", "kto"])
def test_the_padding_free_forward_gives_trls_loss_and_gradients(tiny_model_dir, tmp_path, task, monkeypatch):
    import finetune.preference as preference
    from finetune.collate import pad_packed_rows
    from finetune.preference import OUTPUTS, use_padding_free_forward

    original, calls = preference._padding_free, []
    monkeypatch.setattr(preference, "_padding_free", lambda *a: calls.append(1) or original(*a))
    trainer = _trl_trainer(tiny_model_dir, task, tmp_path)
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["attention_mask"] == 0).any()  # TRL's batch is padded

    def loss_and_grads():
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}

    trl_loss, trl_grads = loss_and_grads()
    undo = use_padding_free_forward(trainer.model.get_base_model(), OUTPUTS[task])
    assert undo is not None
    decoder = trainer.model.get_base_model().base_model
    rows = []
    layer_hook = decoder.layers[0].register_forward_hook(lambda m, a, out: rows.append(a[0].shape[1]))
    ours_loss, ours_grads = loss_and_grads()
    assert len(calls) >= 2  # the policy's and the reference's forwards took the padding-free path
    unpadded, rows[:] = list(rows), []
    remove = pad_packed_rows(decoder, "bf16", multiple=8)  # what a bf16 run adds: rows rounded up to 8 tokens
    padded_loss, padded_grads = loss_and_grads()
    remove()
    layer_hook.remove()
    assert any(n % 8 for n in unpadded) and rows == [n + -n % 8 for n in unpadded]
    assert torch.allclose(padded_loss, ours_loss, atol=1e-6)
    for name, grad in padded_grads.items():
        assert torch.allclose(grad, ours_grads[name], atol=1e-6), name
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        ours = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                             fused_lm_head=True)
        undo()
        theirs = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                               fused_lm_head=True)
    assert torch.allclose(ours_loss, trl_loss, atol=1e-5), (ours_loss, trl_loss)
    assert ours_grads.keys() == trl_grads.keys() and ours_grads
    for name, grad in trl_grads.items():
        assert torch.allclose(ours_grads[name], grad, atol=1e-5, rtol=1e-4), name
    for key in ("log_probs", "entropy", "mean_logits"):
        assert torch.allclose(getattr(ours, key), getattr(theirs, key), atol=1e-5), key


@pytest.mark.integration
def test_the_preference_metric_is_the_models_log_ratio_margin(tiny_model_dir, dpo_file, tmp_path):
    """Reward accuracy and margin of a tuned run against its base equal a direct computation from each model's
    log-softmax on the sequences TRL's DPOTrainer builds for training."""
    from finetune.evaluate import EvalConfig
    from finetune.evaluate.preference import evaluate_preferences
    from finetune.models import load_model

    out = tmp_path / "out"
    finetune_model(_config(tiny_model_dir, dpo_file, out, "dpo", do_eval=False, max_steps=4))
    held_out = write_jsonl(tmp_path / "held_out.jsonl", _pairs(30)[24:])
    results = evaluate_preferences([str(tiny_model_dir), str(out)],
                                   EvalConfig(task="dpo", data=str(held_out), dtype="float32", plots=False,
                                              output_dir=str(tmp_path / "eval")))
    tuned = results["runs"][1]["metrics"]

    trained = _trl_trainer(tiny_model_dir, "dpo", tmp_path)
    tokenized = trained._prepare_dataset(__import__("datasets").Dataset.from_list(_pairs(30)[24:]),
                                         trained.processing_class, trained.args, "held_out")

    def logps(model, prompt, reply):
        ids = torch.tensor([prompt + reply])
        with torch.no_grad():
            token_logps = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        return sum(float(token_logps[len(prompt) - 1 + i, t]) for i, t in enumerate(reply))

    base = load_model(str(tiny_model_dir), dtype=torch.float32).eval()
    policy = load_model(str(out / "merged"), dtype=torch.float32).eval()
    margins = []
    for row in tokenized:
        chosen = logps(policy, row["prompt_ids"], row["chosen_ids"]) - logps(base, row["prompt_ids"], row["chosen_ids"])
        rejected = (logps(policy, row["prompt_ids"], row["rejected_ids"])
                    - logps(base, row["prompt_ids"], row["rejected_ids"]))
        margins.append(chosen - rejected)
    assert tuned["reward_margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-3)
    assert tuned["reward_accuracy"] == pytest.approx(100 * sum(m > 0 for m in margins) / len(margins))
    assert results["runs"][0]["metrics"]["reward_margin"] == 0


def test_thinking_templates_render_preference_pairs_with_thinking_off():
    """Qwen 3.5's default generation prompt opens <think>: rendered with it, each reply's tokens would begin by
    closing the block. With thinking off (the column TRL passes to the template) the prompt renders as a prefix of
    prompt + reply, so the replies compared are the replies."""
    from finetune.preference import thinking_off
    from tests.families import family_tokenizer

    row = {"prompt": [{"role": "user", "content": "What is 2 and 2?"}],
           "chosen": [{"role": "assistant", "content": "It is 4."}],
           "rejected": [{"role": "assistant", "content": "It is 5."}]}
    assert thinking_off([row], family_tokenizer("qwen2")) == [row]  # no switch: as it was
    tokenizer = family_tokenizer("qwen3_5")
    (off,) = thinking_off([row], tokenizer)
    kwargs = off["chat_template_kwargs"]
    assert kwargs == {"enable_thinking": False}
    prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True, **kwargs)
    for reply in ("chosen", "rejected"):
        whole = tokenizer.apply_chat_template(row["prompt"] + row[reply], tokenize=False, **kwargs)
        assert whole.startswith(prompt) and whole[len(prompt):].startswith(row[reply][0]["content"])
    default = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert not tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)[len(default):].startswith(
        "It is 4.")  # what the default prompt would have made the reply begin with


# --- pairs of tool calls ----------------------------------------------------------------------------------------

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "required": ["city"],
                                                           "properties": {"city": {"type": "string"}}}}}


def _call_pair(city: str, wrong: str) -> dict:
    """Which city to call the weather tool for, as export-log writes a regenerated call (OpenAI's shape)."""
    def reply(name, call_id):
        return [{"role": "assistant", "content": "", "tool_calls": [{"id": call_id, "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": name})}}]}]

    return {"prompt": [{"role": "user", "content": f"Weather in {city}?"}], "chosen": reply(city, "call_good"),
            "rejected": reply(wrong, "call_bad"), "tools": [WEATHER]}


@pytest.mark.parametrize("family", ["qwen2", "mistral", "llama", "phi4mini", "gemma3_text", "smollm2"])
def test_tool_call_pairs_are_scored_on_the_call_serving_parses(family):
    """TRL's tokenization of a pair (as finetune.evaluate's tokenize_preference has it) after tool_rows: the prompt
    is the one serving renders with the tools, and each reply's tokens are the family's own call, which the
    server's parser reads back as the record's call. Mistral v0.3's template would refuse OpenAI's ids, and
    SmolLM2's and Gemma's, which have no tools, would leave them out."""
    from finetune.chat_template import generation_prompt
    from finetune.evaluate.preference import tokenize_preference
    from finetune.preference import tool_rows
    from finetune.tool_call_formats import parse_tool_calls
    from finetune.tool_calls import tool_messages
    from tests.families import FAMILIES
    from tests.quantize.test_ollama_render import tokenizer_for

    tokenizer = tokenizer_for(family)
    row = _call_pair("Paris", "Lyon")
    (rendered,) = tool_rows([row], tokenizer)
    messages, tools = tool_messages(row["prompt"], row["tools"], tokenizer)
    served = generation_prompt(tokenizer, messages, **({"tools": tools} if tools else {}))
    chosen, rejected = tokenize_preference(tokenizer, rendered)
    assert tokenizer.decode(chosen[0]) == served or tokenizer.decode(chosen[0]).startswith(served)
    assert "get_weather" in served  # the model is told its tools
    ends = [t for t in (*FAMILIES.get(family, FAMILIES["qwen2"])[4], tokenizer.eos_token) if t]
    for (_, reply), city in ((chosen, "Paris"), (rejected, "Lyon")):
        text = tokenizer.decode(reply)
        text = text[:min(text.find(e) if e in text else len(text) for e in ends)]  # serving stops at the turn's end
        _, calls = parse_tool_calls(text, {"get_weather": WEATHER["function"]["parameters"]})
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
            ("get_weather", {"city": city})], family


@pytest.mark.integration
def test_dpo_trains_on_tool_call_pairs_from_the_log(tiny_model_dir, tmp_path):
    """The log's pairs of calls and of answers after a tool's result (export-log's rows), through DPO end to end."""
    from neural_chat_app.chatlog import ChatLog
    from neural_chat_app.export_log import export_preferences
    from tests.neural_chat_app.test_preference_log import log_tool_turns

    log = ChatLog(tmp_path / "log.sqlite")
    cities = ["Paris", "Lyon", "Nice", "Oslo", "Rome", "Bern", "Kyiv", "Riga"]
    for i, city in enumerate(cities):
        log_tool_turns(log, f"s{i}", city, cities[i - 1])
    log.close()
    assert export_preferences(tmp_path / "log.sqlite", tmp_path / "dpo.jsonl", "dpo")["pairs_written"] == 16
    out = tmp_path / "out"
    result = finetune_model(_config(tiny_model_dir, tmp_path / "dpo.jsonl", out, "dpo", max_steps=3,
                                    max_seq_length=2048))
    losses = [h["loss"] for h in _history(out) if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert "eval_reward_margin" in result.metrics, result.metrics
    assert torch.isfinite(torch.tensor(result.metrics["eval_reward_margin"]))
