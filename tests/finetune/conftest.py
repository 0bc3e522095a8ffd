"""Small data files for each task and a fast training config on the tiny model."""

from __future__ import annotations

import json

import pytest

from finetune import (
    DataArguments,
    FinetuningArguments,
    ModelArguments,
    TextGenerationFinetuningConfig,
    TrainingArguments,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def alpaca_file(tmp_path):
    rows = [{"instruction": f"Say the number {i}", "input": "" if i % 2 else f"n={i}", "output": f"The number is {i}."}
            for i in range(24)]
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


@pytest.fixture
def chat_file(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"what is {i}?"}, {"role": "assistant", "content": f"It is {i}."},
                          {"role": "user", "content": "and twice?"}, {"role": "assistant", "content": f"{2 * i}"}]}
            for i in range(24)]
    return write_jsonl(tmp_path / "chat.jsonl", rows)


@pytest.fixture
def summarization_file(tmp_path):
    rows = [{"article": f"The weather will be sunny on day {i}. " * 6, "highlights": f"Sunny on day {i}."}
            for i in range(24)]
    return write_jsonl(tmp_path / "news.jsonl", rows)


@pytest.fixture
def code_file(tmp_path):
    rows = [{"prompt": f"def add_{i}(a):\n", "completion": f"    return a + {i}\n"} for i in range(24)]
    return write_jsonl(tmp_path / "code.jsonl", rows)


@pytest.fixture
def extraction_file(tmp_path):
    rows = []
    for i in range(24):
        target = {"attributes": [{"type": "INTEREST", "value": f"topic {i}"}], "aspects": [],
                  "sentiment": "POSITIVE"}
        rows.append({"messages": [{"role": "system", "content": "Extract attributes as JSON."},
                                  {"role": "user", "content": f"I love topic {i}."},
                                  {"role": "assistant", "content": json.dumps(target)}]})
    return write_jsonl(tmp_path / "extract.jsonl", rows)


def tiny_config(model_dir, train_file, output_dir, task="completion", max_steps=8, **overrides):
    """A config that trains the tiny model for a few steps; overrides go to the dataclass that has the field."""
    training = {"output_dir": str(output_dir), "do_train": True, "max_steps": max_steps,
                "per_device_train_batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1, "save_steps": 4,
                "report_to": "none", "disable_tqdm": True, "seed": 0}
    data = {"train_file": str(train_file), "max_seq_length": 128}
    fine = {"task": task, "lora_all_linear": True}
    model = {"model_name_or_path": str(model_dir)}
    for key, value in overrides.items():
        for group, cls in ((data, DataArguments), (fine, FinetuningArguments), (model, ModelArguments)):
            if key in cls.__dataclass_fields__:
                group[key] = value
                break
        else:
            training[key] = value
    return TextGenerationFinetuningConfig(ModelArguments(**model), DataArguments(**data),
                                          TrainingArguments(**training), FinetuningArguments(**fine))
