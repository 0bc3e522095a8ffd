"""finetune_model end to end on the tiny model: every task, LoRA and full, outputs, errors, resume.

pytest tests/finetune/test_train.py
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune import finetune_model
from finetune.records import DataError
from tests.finetune.conftest import tiny_config

pytestmark = pytest.mark.integration


def _losses(output_dir):
    history = json.loads((output_dir / "training_metadata.json").read_text())["history"]
    return [h["loss"] for h in history if "loss" in h]


@pytest.mark.parametrize("task,file_fixture", [
    ("completion", "alpaca_file"), ("chat", "chat_file"), ("summarization", "summarization_file"),
    ("code-generation", "code_file"), ("extraction", "extraction_file"),
])
def test_each_task_trains_and_writes_a_loadable_merged_model(task, file_fixture, tiny_model_dir, tmp_path, request):
    out = tmp_path / "out"
    config = tiny_config(tiny_model_dir, request.getfixturevalue(file_fixture), out, task=task, max_steps=12)
    result = finetune_model(config)

    losses = _losses(out)
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    meta = json.loads((out / "training_metadata.json").read_text())
    assert meta["task"] == task and meta["method"] == "lora"
    assert meta["precision"] in ("bf16", "fp32") and meta["metrics"]["train_tokens_per_s"] > 0
    assert len(meta["data_hash"]) == 64 and meta["versions"]["torch"]

    model = AutoModelForCausalLM.from_pretrained(result.merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.merged_dir)
    ids = tokenizer("Say the number 3", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 4


def test_merged_model_matches_base_plus_adapter(tiny_model_dir, alpaca_file, tmp_path):
    from peft import PeftModel

    result = finetune_model(tiny_config(tiny_model_dir, alpaca_file, tmp_path / "out", max_steps=6))
    ids = torch.tensor([[5, 9, 17, 33, 40]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        expected, got = with_adapter(ids).logits, merged(ids).logits
    untouched = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)(ids).logits
    assert torch.allclose(expected, got, atol=1e-4)
    assert not torch.allclose(untouched, got, atol=1e-4)  # training changed the model


def test_the_trained_model_is_gone_before_the_merge_loads_the_base(tiny_model_dir, alpaca_file, tmp_path,
                                                                    monkeypatch):
    """At 8B the trained model holds 16 GB: a base loaded beside it for the merge would not fit 24 GB."""
    import gc
    import weakref

    from transformers import TrainerCallback

    import finetune.train as train

    trained = []

    class KeepAWeakReference(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            trained.append(weakref.ref(model))

    alive_at_merge = []
    real_save_merged = train.save_merged

    def save_merged(*args, **kwargs):
        gc.collect()
        alive_at_merge.append(trained[0]() is not None)
        return real_save_merged(*args, **kwargs)

    monkeypatch.setattr(train, "save_merged", save_merged)
    result = finetune_model(tiny_config(tiny_model_dir, alpaca_file, tmp_path / "out", max_steps=2),
                            callbacks=[KeepAWeakReference()])
    assert alive_at_merge == [False] and result.merged_dir.is_dir()


def test_a_large_model_merges_into_bf16_with_the_delta_in_fp32(tiny_model_dir, alpaca_file, tmp_path, monkeypatch):
    """Above FP32_STORAGE_MAX_PARAMETERS (here: any model) the merged folder is bf16, as published checkpoints of
    that size are, and the merge needs the model's size in bf16, not in fp32 (32 GB at 8B)."""
    from peft import PeftModel

    import finetune.models as models

    monkeypatch.setattr(models, "FP32_STORAGE_MAX_PARAMETERS", 1000)
    result = finetune_model(tiny_config(tiny_model_dir, alpaca_file, tmp_path / "out", max_steps=6))
    assert json.loads((result.merged_dir / "config.json").read_text())["dtype"] == "bfloat16"
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir).state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    exact = PeftModel.from_pretrained(base, result.adapter_dir).merge_and_unload().state_dict()
    untouched = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    assert merged[name].dtype == torch.bfloat16
    # within three bf16 roundings (2^-8 each) of the exact merge: the tiny base's fp32 weight loaded in bf16, PEFT's
    # fp32 delta, their sum; and not the base: the delta survived
    delta = exact[name] - untouched[name]
    error = (merged[name].float() - exact[name]).abs()
    assert (error <= 2**-7 * (untouched[name].abs() + delta.abs()) + 1e-7).all()
    assert not torch.equal(merged[name], untouched[name].to(torch.bfloat16))


def test_the_merge_falls_back_to_bf16_where_fp32_does_not_fit(monkeypatch):
    import finetune.memory as memory
    from finetune.train import merge_dtype

    monkeypatch.setattr(memory, "available_gib", lambda: (4.0, "test"))
    assert merge_dtype(100_000_000) == torch.float32  # 0.4 GiB
    assert merge_dtype(1_500_000_000) == torch.bfloat16  # 5.6 GiB in fp32 > 4
    assert merge_dtype(8_000_000_000) == torch.bfloat16  # above FP32_STORAGE_MAX_PARAMETERS whatever the memory


def test_full_finetune_writes_the_whole_model(tiny_model_dir, alpaca_file, tmp_path):
    out = tmp_path / "out"
    result = finetune_model(tiny_config(tiny_model_dir, alpaca_file, out, full_finetune=True, learning_rate=1e-3))
    assert result.adapter_dir is None and not (out / "adapter").exists()
    trained = AutoModelForCausalLM.from_pretrained(result.merged_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert trained.lm_head.weight.dtype == torch.float32  # fp32 master weights, bf16 compute
    assert not torch.allclose(trained.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def test_eval_reports_loss_before_and_after(tiny_model_dir, chat_file, tmp_path):
    config = tiny_config(tiny_model_dir, chat_file, tmp_path / "out", task="chat", max_steps=16, do_eval=True,
                         validation_split_percentage=20)
    result = finetune_model(config)
    metrics = result.metrics
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    # and the base-vs-tuned generation report of finetune.evaluate
    report = (result.output_dir / "eval" / "eval_report.md").read_text()
    assert "base" in report and "fine-tuned" in report
    assert metrics["eval_perplexity"] == pytest.approx(float(torch.exp(torch.tensor(metrics["eval_loss"]))))


def test_packing_trains_on_fewer_rows(tiny_model_dir, chat_file, tmp_path, caplog):
    from finetune.hardware import matmul_precision

    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="finetune.train"):
        finetune_model(tiny_config(tiny_model_dir, chat_file, out, task="chat", dataset_concatenation=True,
                                   max_steps=2))
    # the run says what it computes in and why, before training
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compute: ")]
    precision, why = matmul_precision()  # measured where bf16 has no AMX
    assert f": {precision}, because {why}" in line and "thread(s)" in line and "allocator" in line
    counts = json.loads((out / "training_metadata.json").read_text())["data"]
    assert counts["train_packed_rows"] < counts["train_examples"]


def test_early_stopping_stops_before_max_steps(tiny_model_dir, chat_file, tmp_path):
    config = tiny_config(tiny_model_dir, chat_file, tmp_path / "out", task="chat", max_steps=200, do_eval=True,
                         validation_split_percentage=20, early_stopping_patience=1, save_steps=1,
                         learning_rate=0.5, save_total_limit=2)
    metrics = finetune_model(config).metrics
    assert metrics["train_steps"] < 200


def test_a_callback_passed_to_finetune_model_sees_every_step(tiny_model_dir, alpaca_file, tmp_path):
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        def __init__(self):
            self.ended = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ended.append(state.global_step)

    steps = Steps()
    result = finetune_model(tiny_config(tiny_model_dir, alpaca_file, tmp_path / "out", max_steps=3), callbacks=[steps])
    assert steps.ended == [1, 2, 3] and result.metrics["train_steps"] == 3
    assert result.metrics["train_tokens_per_s"] > 0  # the recipe's own callbacks still run next to it


def test_fewer_examples_than_a_batch_is_an_error(tiny_model_dir, alpaca_file, tmp_path):
    config = tiny_config(tiny_model_dir, alpaca_file, tmp_path / "out", max_train_samples=3)
    with pytest.raises(ValueError, match="3 examples, fewer than one batch.*per_device_train_batch_size"):
        finetune_model(config)


def test_fp16_on_cpu_is_an_error_that_explains_bf16(tiny_model_dir, alpaca_file, tmp_path):
    config = tiny_config(tiny_model_dir, alpaca_file, tmp_path / "out", fp16=True, use_cpu=True)
    with pytest.raises(ValueError, match="bf16"):
        finetune_model(config)


def test_output_dir_of_another_run_is_refused_unless_overwrite(tiny_model_dir, alpaca_file, chat_file, tmp_path):
    out = tmp_path / "out"
    finetune_model(tiny_config(tiny_model_dir, alpaca_file, out, max_steps=2))
    with pytest.raises(FileExistsError, match="different fine-tuning run.*overwrite_output_dir"):
        finetune_model(tiny_config(tiny_model_dir, chat_file, out, task="chat", max_steps=2))
    result = finetune_model(tiny_config(tiny_model_dir, chat_file, out, task="chat", max_steps=2,
                                        overwrite_output_dir=True))
    assert json.loads((result.output_dir / "training_metadata.json").read_text())["task"] == "chat"


def test_output_dir_with_foreign_files_is_refused(tiny_model_dir, alpaca_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not from a fine-tuning run"):
        finetune_model(tiny_config(tiny_model_dir, alpaca_file, out, max_steps=2))


def test_no_training_data_names_the_field(tiny_model_dir, tmp_path):
    from transformers import TrainingArguments

    from finetune import ModelArguments, TextGenerationFinetuningConfig

    config = TextGenerationFinetuningConfig(
        model_args=ModelArguments(model_name_or_path=str(tiny_model_dir)),
        training_args=TrainingArguments(output_dir=str(tmp_path / "o"), report_to="none"))
    with pytest.raises(DataError, match="train_file"):
        finetune_model(config)


def test_neuralchat_snippet_runs_with_only_imports_changed(tiny_model_dir, alpaca_file, tmp_path, monkeypatch):
    """The DESIGN.md contract, on a small Alpaca file named like NeuralChat's (alpaca_data.json)."""
    monkeypatch.chdir(alpaca_file.parent)
    from finetune import (
        DataArguments,
        FinetuningArguments,
        ModelArguments,
        TextGenerationFinetuningConfig,
        TrainingArguments,
        finetune_model,
    )
    finetune_model(TextGenerationFinetuningConfig(
        model_args=ModelArguments(model_name_or_path=str(tiny_model_dir)),
        data_args=DataArguments(train_file="alpaca_data.json", validation_split_percentage=10),
        training_args=TrainingArguments(output_dir="./tmp", do_train=True, do_eval=True, num_train_epochs=1,
                                        overwrite_output_dir=True, per_device_train_batch_size=4,
                                        per_device_eval_batch_size=4, gradient_accumulation_steps=2,
                                        save_strategy="no", log_level="info", save_total_limit=2, bf16=True),
        finetune_args=FinetuningArguments(task="completion")))
    meta = json.loads((tmp_path / "tmp" / "training_metadata.json").read_text())
    assert meta["metrics"]["train_steps"] == 3  # 22 examples / (4 x 2) per step, rounded up
    assert "eval_loss" in meta["metrics"]


def test_gradient_checkpointing_trains_the_same_as_without(tiny_model_dir, chat_file, tmp_path):
    plain = finetune_model(tiny_config(tiny_model_dir, chat_file, tmp_path / "a", task="chat", max_steps=4,
                                       lora_dropout=0.0, precision="fp32"))
    checkpointed = finetune_model(tiny_config(tiny_model_dir, chat_file, tmp_path / "b", task="chat", max_steps=4,
                                              lora_dropout=0.0, precision="fp32", gradient_checkpointing=True))
    assert checkpointed.metrics["train_loss"] == pytest.approx(plain.metrics["train_loss"], rel=1e-4)


def test_special_tokens_grow_the_vocabulary_and_survive_the_merge(tiny_model_dir, tmp_path):
    """DataArguments.special_tokens: the embeddings are resized to the tokenizer that has the new tokens, the
    adapter keeps the resized embeddings, and the merged model reloads with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.finetune.conftest import write_jsonl

    rows = [{"messages": [{"role": "user", "content": f"call the tool for {i}"},
                          {"role": "assistant", "content": f"<|tool|> lookup({i}) <|/tool|>"}]} for i in range(16)]
    data = write_jsonl(tmp_path / "tools.jsonl", rows)
    result = finetune_model(tiny_config(tiny_model_dir, data, tmp_path / "out", task="chat", max_steps=2,
                                        special_tokens=["<|tool|>", "<|/tool|>"]))
    tokenizer = AutoTokenizer.from_pretrained(result.merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir)
    base_vocab = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.vocab_size
    tool = tokenizer.convert_tokens_to_ids("<|tool|>")
    assert tool >= base_vocab and len(tokenizer) == base_vocab + 2
    assert merged.get_input_embeddings().num_embeddings == len(tokenizer)
    assert tokenizer("<|tool|> x")["input_ids"][0] == tool  # one token, not its pieces
    with torch.no_grad():
        assert torch.isfinite(merged(torch.tensor([[tool, 5, 6]])).logits).all()
    # without special_tokens nothing grows, even where the tokenizer has a few entries past the embeddings (the
    # embedded SmolLM2's has 49157 for 49152 rows)
    import shutil

    wider = tmp_path / "wider-tokenizer"
    shutil.copytree(tiny_model_dir, wider)
    extra = AutoTokenizer.from_pretrained(wider)
    extra.add_tokens(["<|unused_a|>", "<|unused_b|>"])
    extra.save_pretrained(wider)
    assert len(extra) > base_vocab
    plain = finetune_model(tiny_config(wider, data, tmp_path / "plain", task="chat", max_steps=1))
    assert AutoModelForCausalLM.from_pretrained(plain.merged_dir).config.vocab_size == base_vocab


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_output_head_computes_in_the_runs_precision(precision, tiny_model_dir, chat_file, tmp_path, monkeypatch):
    """The Trainer calls the loss (where our head runs) outside autocast, with fp32 hidden states: a bf16 run must
    still run the head's matmuls in bf16, and never widen the frozen head to fp32 (a 1 GB copy per step and fp32
    matmuls at 1B); an fp32 run computes it in fp32. Checked on every op the training steps dispatch."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import TrainerCallback

    from tests.finetune.test_memory import _simulate_a_bf16_cpu

    _simulate_a_bf16_cpu(monkeypatch)  # bf16 is chosen on any CPU here: what is checked is where it is used
    vocab = AutoTokenizer.from_pretrained(tiny_model_dir).__len__()
    head_matmuls, widened = [], []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default) and any(
                    vocab in t.shape for t in tensors):
                head_matmuls.append({t.dtype for t in tensors if vocab in t.shape})
            if func is torch.ops.aten._to_copy.default and tensors[0].shape[0] == vocab and tensors[0].dim() == 2:
                widened.append(kwargs.get("dtype"))
            return func(*args, **(kwargs or {}))

    class During(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.mode = Watch()
            self.mode.__enter__()

        def on_step_end(self, args, state, control, **kw):
            self.mode.__exit__(None, None, None)

    config = tiny_config(tiny_model_dir, chat_file, tmp_path / "out", task="chat", max_steps=2, precision=precision)
    finetune_model(config, callbacks=[During()])
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    assert head_matmuls and all(dtypes == {want} for dtypes in head_matmuls), head_matmuls
    if precision == "bf16":
        assert torch.float32 not in widened, widened


def test_tool_use_records_train_through_finetune_model(tiny_model_dir, tmp_path):
    """OpenAI tool-use records (calls, results, tools), as export-log writes them, train end to end; the tiny
    model's ChatML template has no tools, so they go in as serving puts them (finetune.tool_calls)."""
    from tests.finetune.test_tool_calls import TOOL_CONVERSATION, WEATHER_TOOLS

    rows = []
    for i in range(8):
        messages = json.loads(json.dumps(TOOL_CONVERSATION).replace("Oslo", f"Oslo{i}"))
        rows.append({"messages": messages, "tools": WEATHER_TOOLS})
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    # the Hermes tool prompt alone is about 600 tokens of the tests' small vocabulary
    finetune_model(tiny_config(tiny_model_dir, data, out, task="chat", max_steps=6, max_seq_length=1024))
    losses = _losses(out)
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2]), losses
