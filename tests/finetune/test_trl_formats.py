"""Data prepared for TRL's SFTTrainer trains unchanged: `text`, `prompt`/`completion` and conversational
prompt/completion records get the token ids and the learned positions TRL's own SFTTrainer gives them.

pytest -m "" tests/finetune/test_trl_formats.py
"""

from __future__ import annotations

import json

import pytest

from finetune.formatting import IGNORE_INDEX, FormatOptions, tokenize_record
from finetune.records import DataError, Record, check_records

RECORDS = {
    "language modeling": [{"text": "Intel Xeon processors with AMX run bfloat16 matrix multiplications quickly."},
                          {"text": "I love hiking but I am not a fan of crowded trails."}],
    "prompt-completion": [{"prompt": "What is the capital of France?", "completion": " The capital is Paris."},
                          {"prompt": "def add(a, b):", "completion": "\n    return a + b\n"}],
    "conversational prompt-completion": [
        {"prompt": [{"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": "What is the capital of France?"}],
         "completion": [{"role": "assistant", "content": "Paris."}]},
        {"prompt": [{"role": "user", "content": "Summarize the article."},
                    {"role": "assistant", "content": "Which article?"},  # an earlier reply: context, not learned
                    {"role": "user", "content": "The weather will be sunny tomorrow."}],
         "completion": [{"role": "assistant", "content": "Sunny tomorrow."}]},
    ],
}


def _trl_rows(tokenizer, tiny_model_dir, records, tmp_path):
    """What TRL's SFTTrainer makes of the records: its own dataset preparation, run for real."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    trainer = trl.SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=trl.SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], max_length=512, packing=False,
                            use_cpu=True, bf16=False),
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
    )
    return list(trainer.train_dataset)


@pytest.mark.integration
@pytest.mark.parametrize("kind", list(RECORDS))
def test_ids_and_learned_positions_equal_trls(kind, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = _trl_rows(tokenizer, tiny_model_dir, RECORDS[kind], tmp_path)
    for record, trl_row in zip(RECORDS[kind], expected):
        ours = tokenize_record(tokenizer, record, FormatOptions(task="completion", max_seq_length=512))
        assert ours["input_ids"] == trl_row["input_ids"]
        assert ours["labels"] == trl_row.get("labels", trl_row["input_ids"])  # TRL folds its masks into labels
        learned = [label != IGNORE_INDEX for label in ours["labels"]]
        if kind == "conversational prompt-completion":
            learned_text = tokenizer.decode([t for t, keep in zip(ours["input_ids"], learned) if keep])
            assert record["completion"][0]["content"] in learned_text and "Which article" not in learned_text


@pytest.mark.integration
@pytest.mark.parametrize("kind", list(RECORDS))
def test_finetune_model_trains_on_each_trl_format(kind, tiny_model_dir, tmp_path):
    from finetune import finetune_model
    from tests.finetune.conftest import tiny_config

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS[kind] * 8))
    task = "chat" if kind.startswith("conversational") else "completion"
    out = tmp_path / "out"
    finetune_model(tiny_config(tiny_model_dir, data, out, task=task, max_steps=4))
    history = json.loads((out / "training_metadata.json").read_text())["history"]
    assert len([h for h in history if "loss" in h]) == 4


def test_wrong_shapes_are_named():
    strings = [Record({"prompt": "a", "completion": "b"}, "f.jsonl:1")]
    with pytest.raises(DataError, match="f.jsonl:1: prompt and completion are plain strings.*task='completion'"):
        check_records(strings, "chat", "f.jsonl")
    no_reply = [Record({"prompt": [{"role": "user", "content": "a"}],
                        "completion": [{"role": "user", "content": "b"}]}, "f.jsonl:2")]
    with pytest.raises(DataError, match="f.jsonl:2: the completion holds no assistant message"):
        check_records(no_reply, "chat", "f.jsonl")
    empty = [Record({"text": "  "}, "f.jsonl:3")]
    with pytest.raises(DataError, match="f.jsonl:3: 'text' must be a non-empty string"):
        check_records(empty, "completion", "f.jsonl")
