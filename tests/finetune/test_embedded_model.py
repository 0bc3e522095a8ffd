"""Fine-tune the embedded SmolLM2-135M-Instruct for a few steps on the demo dataset.

pytest tests/finetune/test_embedded_model.py   (about a minute on 2 cores)
"""

import json
from pathlib import Path

import pytest

from finetune import (
    DataArguments,
    FinetuningArguments,
    ModelArguments,
    TextGenerationFinetuningConfig,
    TrainingArguments,
    finetune_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEMO_DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "aurora_support.jsonl"


def test_embedded_model_learns_the_demo_domain(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    result = finetune_model(TextGenerationFinetuningConfig(
        model_args=ModelArguments(),  # the embedded default
        data_args=DataArguments(train_file=str(DEMO_DATA), validation_split_percentage=10, max_seq_length=256),
        training_args=TrainingArguments(output_dir=str(out), do_train=True, do_eval=True, max_steps=15,
                                        per_device_train_batch_size=4, learning_rate=5e-4, logging_steps=1,
                                        save_strategy="no", report_to="none", disable_tqdm=True),
        # generation_eval off: the base-vs-tuned generation report has its own tests; this one generates below
        finetune_args=FinetuningArguments(task="chat", lora_all_linear=True, lora_rank=16, lora_alpha=32,
                                          generation_eval=False)))

    meta = json.loads((out / "training_metadata.json").read_text())
    losses = [h["loss"] for h in meta["history"] if "loss" in h]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    # better than the base model on held-out questions it never trained on
    assert result.metrics["eval_loss"] < result.metrics["eval_loss_before"]
    from finetune.hardware import matmul_precision

    assert meta["precision"] == matmul_precision()[0]

    tokenizer = AutoTokenizer.from_pretrained(result.merged_dir)
    model = AutoModelForCausalLM.from_pretrained(result.merged_dir)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "How long is the Aurora X2 warranty?"}],
                                         add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out_ids = model.generate(**chat, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out_ids[0, chat["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.strip()
