"""Preference tuning: `task="dpo"` and `task="kto"` through TRL's own DPOTrainer and KTOTrainer.

    python -m finetune configs/demo_aurora_dpo.yaml

TRL prepares the data (its tokenization of prompt and replies, conversational or plain text) and computes the loss
and the reward metrics, unchanged. Around it runs the SFT recipe: records read and checked with file:line errors
(finetune.records), LoRA from our lora_* settings, where the reference model is the base with the adapter switched
off (TRL does this when it wraps the model itself: no second copy), precision and threads from finetune.hardware,
resume from the last complete checkpoint, and the same run folder (adapter/, merged/, training_metadata.json).

What DPOTrainer's defaults spend on a CPU, and what is done instead:
- TRL pads each batch's chosen and rejected sequences to the longest one, and off Triton (CUDA/XPU) its fused head
  projects every position onto the vocabulary, prompt and padding included. `use_padding_free_forward` puts each
  sequence's real tokens into one row, runs attention once per sequence (finetune.packed_attention) and projects
  only the reply tokens, with TRL's own chunked log-probability kernel: the loss and metrics TRL computes from it
  are the same (tests/finetune/test_preference.py), the padding and prompt positions cost nothing.
- TRL's configs turn gradient checkpointing on and load a model given by name in fp32 under bf16 autocast; the
  recipe keeps the run's settings (checkpointing off unless asked) and loads the frozen weights in bf16 where the
  CPU has bf16 instructions (fp32 adapters), with the lean RMSNorm/MLP ops of the SFT path (finetune.lean_ops).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import random
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from finetune.callbacks import ThroughputCallback
from finetune.config import TextGenerationFinetuningConfig
from finetune.hardware import compute_summary
from finetune.records import PAIR, Record, preference_label, tool_definitions

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from finetune.train import FinetuneResult

logger = logging.getLogger(__name__)

# TRL's per-token outputs each trainer reads from the fused head (DPOTrainer and KTOTrainer.__init__)
OUTPUTS = {"dpo": ("log_probs", "entropy", "mean_logits", "is_top1"), "kto": ("log_probs", "entropy", "mean_logits")}
VOCAB_CHUNK = 32768  # TRL's vocabulary chunk for its log-probability kernel (trl.trainer.utils)


def preference_rows(records: list[Record]) -> list[dict]:
    """Checked records -> the rows TRL's trainer reads: prompt/chosen/rejected (an implicit prompt made explicit,
    record by record, so a file may mix both) or prompt/completion/label (a CSV label read as a bool)."""
    from trl.data_utils import extract_prompt

    rows = []
    for record in records:
        data = record.data
        if set(PAIR) <= set(data):
            row = ({"prompt": data["prompt"], "chosen": data["chosen"], "rejected": data["rejected"]}
                   if "prompt" in data else extract_prompt({k: data[k] for k in PAIR}))
        else:
            row = {"prompt": data["prompt"], "completion": data["completion"], "label": preference_label(data["label"])}
        tools = tool_definitions(data.get("tools"))[0]
        rows.append({**row, "tools": tools} if tools else row)
    return rows


def tool_rows(rows: list[dict], tokenizer) -> list[dict]:
    """Conversational rows with tool parts (`tools`, calls, results) in the form the chat template renders them, as
    fine-tuning and serving render them (finetune.tool_calls.tool_messages): TRL hands the messages and `tools` to
    the template as they are, which templates without tools would leave out, Mistral v0.3's would refuse (call ids
    of 9 characters), and which would write OpenAI's arguments (a JSON string) as a quoted string. `tools` stays
    only where the template renders it."""
    from finetune.tool_calls import has_tool_parts, tool_messages

    out = []
    for row in rows:
        replies = [k for k in ("chosen", "rejected", "completion") if k in row]
        if not isinstance(row["prompt"], list) or not has_tool_parts(
                row["prompt"] + [m for k in replies for m in row[k]], row.get("tools")):
            out.append(row)
            continue
        new = {k: v for k, v in row.items() if k != "tools"}
        for key in replies:
            messages, tools = tool_messages(row["prompt"] + row[key], row.get("tools"), tokenizer)
            # the rendering form has the same messages, but for a system message put first (Hermes, Phi-4-mini)
            start = len(messages) - len(row[key])
            new["prompt"], new[key] = messages[:start], messages[start:]
            if tools:
                new["tools"] = tools
        out.append(new)
    return out


def thinking_off(rows: list[dict], tokenizer) -> list[dict]:
    """Conversational rows rendered with thinking off where the chat template switches it (Qwen 3, Qwen 3.5, Gemma
    4), through the column TRL's trainers pass to the template: replies without reasoning follow the generation
    prompt that writes none, as in supervised fine-tuning (finetune.chat_template). Qwen 3.5's default prompt
    opens a <think> block, and the replies' tokens would begin by closing it."""
    from finetune.chat_template import thinking_switch

    if not thinking_switch(tokenizer):
        return rows
    return [{**row, "chat_template_kwargs": {"enable_thinking": False}} for row in rows]


def kto_rows(rows: list[dict], seed: int) -> list[dict]:
    """KTOTrainer's rows in a seeded random order: pairs split into a good and a bad example. KTO batches are read
    in order (each example's KL term uses its batch neighbours' replies), and TRL's own unpairing puts all good
    replies before all bad ones: batches would hold one label only."""
    unpaired = []
    for row in rows:
        if "chosen" in row:
            tools = {"tools": row["tools"]} if row.get("tools") else {}
            unpaired += [{"prompt": row["prompt"], "completion": row["chosen"], "label": True, **tools},
                         {"prompt": row["prompt"], "completion": row["rejected"], "label": False, **tools}]
        else:
            unpaired.append(row)
    random.Random(seed).shuffle(unpaired)
    return unpaired


def trl_args(config: TextGenerationFinetuningConfig, device: str, precision: str):
    """TRL's DPOConfig / KTOConfig holding the run's TrainingArguments (ours, or a TRL config passed as
    training_args, whose own TRL settings are kept) with the recipe's changes and our preference fields."""
    import transformers
    from trl import DPOConfig, KTOConfig

    from finetune.train import run_settings

    fa, args = config.finetune_args, config.training_args
    cls = DPOConfig if fa.task == "dpo" else KTOConfig
    source = cls if isinstance(args, cls) else transformers.TrainingArguments
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(source) if f.init}
    values |= run_settings(config, device, precision) | {
        "include_num_input_tokens_seen": "non_padding",  # TRL pads its batches: count the real tokens
        "remove_unused_columns": True,  # the trainer keeps the tokenized columns it reads, drops the text
        "max_length": config.data_args.max_seq_length,
        "dataset_num_proc": config.data_args.preprocessing_num_workers,
        "beta": fa.beta,
        "precompute_ref_log_probs": fa.precompute_ref_log_probs,
    }
    if fa.task == "kto":
        values |= {"desirable_weight": fa.desirable_weight, "undesirable_weight": fa.undesirable_weight}
        if source is not cls:  # KTO reads its (shuffled: kto_rows) examples in order, for the KL term
            values["train_sampling_strategy"] = "sequential"
    return cls(**values)


# --- the padding-free forward ------------------------------------------------------------------------------------

_SCALES = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def use_padding_free_forward(model, outputs: tuple[str, ...]) -> Callable[[], None] | None:
    """Replace the fused-head forward TRL's trainer gave `model` (the base model under PEFT) by a padding-free one.

    TRL calls `model(input_ids, attention_mask, labels, fused_lm_head=True)` on right-padded batches and reads
    per-token log-probabilities of shape (batch, length - 1). This forward computes the same from the real tokens
    only: one row with restarting position ids (one attention call per sequence where finetune.packed_attention
    applies), and TRL's kernel on the positions that have a label. Every other call goes to TRL's forward.
    Returns the undo, or None (and changes nothing) for a model whose head this does not reproduce or whose
    stateful layers cannot run once per example (finetune.packed_attention.use_packed_rows)."""
    from finetune.packed_attention import use_packed_rows

    config = model.config.get_text_config()
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _SCALES) or "forward" not in vars(model):
        logger.info("%s scales its logits or has no fused head: TRL's padded forward is kept", type(model).__name__)
        return None
    rows = use_packed_rows(model)
    if rows is None:
        logger.info("%s has layers whose state runs along the sequence: TRL's padded forward is kept",
                    type(model).__name__)
        return None
    per_example, undo_rows = rows
    trl_forward = model.forward
    softcap = getattr(config, "final_logit_softcapping", None)

    def forward(self, *args, fused_lm_head=False, **kwargs):
        # PEFT passes inputs_embeds, output_attentions, ... as None: anything else set goes to TRL's forward
        others = {k for k, v in kwargs.items() if v is not None} - {"input_ids", "attention_mask", "labels",
                                                                    "use_cache", "return_dict"}
        if not fused_lm_head or args or others or kwargs.get("attention_mask") is None:
            return trl_forward(*args, fused_lm_head=fused_lm_head, **kwargs)
        out = _padding_free(self, kwargs["input_ids"], kwargs["attention_mask"], kwargs["labels"], per_example,
                            softcap, outputs)
        return out if out is not None else trl_forward(fused_lm_head=True, **kwargs)

    model.forward = types.MethodType(forward, model)

    def undo() -> None:
        model.forward = trl_forward
        undo_rows()

    return undo


def _padding_free(model, input_ids, attention_mask, labels, per_example: bool, softcap, outputs):
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction
    from trl.trainer.utils import FusedCausalLMOutput

    real = attention_mask.bool()
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    flat_targets = targets[real]
    keep = flat_targets != -100
    label_mask = labels[:, 1:] != -100
    if int(keep.sum()) != int(label_mask.sum()):  # a label on a padding position: not a batch TRL's collator made
        return None
    positions = (real.long().cumsum(1) - 1)[real]
    backbone_kwargs = {"input_ids": input_ids[real][None], "position_ids": positions[None], "use_cache": False}
    if per_example:
        lengths = real.sum(1)
        bounds = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=input_ids.device)
        bounds[1:] = lengths.cumsum(0)
        backbone_kwargs["cu_seq_lens_q"] = bounds
    # [:T]: a bf16 run's row reaches the layers rounded up to a multiple of 8 tokens (finetune.collate.pad_packed_rows)
    hidden = model.base_model(**backbone_kwargs).last_hidden_state[0, : flat_targets.shape[0]]
    head = model.get_output_embeddings()
    per_token = ChunkedLogProbFunction.apply(hidden[keep], head.weight, head.bias, flat_targets[keep], 1.0,
                                             VOCAB_CHUNK, softcap, 1.0, outputs)
    log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1 = (
        None if x is None else x.new_zeros(label_mask.shape).masked_scatter(label_mask, x) for x in per_token)
    loss = -log_probs.sum() / label_mask.sum().clamp(min=1)
    return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, log_sum_sq_probs=log_sum_sq_probs,
                               mean_logits=mean_logits, is_top1=is_top1, label_mask=label_mask, aux_loss=None)


# --- the recipe ------------------------------------------------------------------------------------------------

def build_trainer(config: TextGenerationFinetuningConfig, model, tokenizer, args, train_rows: list[dict],
                  eval_rows: list[dict], callbacks: Sequence, precision: str, padding_free: bool = True):
    """TRL's trainer for the task on `model` (not yet wrapped: TRL adds the LoRA adapter from our settings), with
    the recipe's forward; returns (trainer, undo)."""
    from datasets import Dataset
    from trl import DPOTrainer, KTOTrainer

    from finetune.collate import pad_packed_rows
    from finetune.lean_ops import use_lean_ops
    from finetune.train import adapters_under_autocast, lora_config

    fa = config.finetune_args
    trainer_cls = DPOTrainer if fa.task == "dpo" else KTOTrainer
    peft_config = lora_config(model, fa)
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                          eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None, processing_class=tokenizer,
                          callbacks=list(callbacks), peft_config=peft_config)
    adapters_under_autocast(trainer.model, precision)
    undos = []
    if padding_free:
        base = trainer.model.get_base_model()
        outputs = OUTPUTS[fa.task] + (("log_sum_sq_probs",) if getattr(args, "use_weighting", False) else ())
        undo = use_padding_free_forward(base, outputs)
        if undo is not None:
            undos.append(undo)
            undos.append(use_lean_ops(base.base_model)[1])
            undos.append(pad_packed_rows(base.base_model, precision))
    return trainer, lambda: [undo() for undo in reversed(undos)]


def finetune_preference(config: TextGenerationFinetuningConfig,
                        callbacks: Sequence[TrainerCallback | type[TrainerCallback]] = ()) -> FinetuneResult:
    """`finetune_model` for task dpo or kto: the same setup, outputs and resume, with TRL's trainer as the loop."""
    from transformers import set_seed

    from finetune.chat_template import ensure_chat_template
    from finetune.dataset import load_records
    from finetune.metadata import run_fingerprint, write_metadata
    from finetune.records import DataError
    from finetune.train import (
        FinetuneResult,
        check_batch,
        check_run_memory,
        load_base_model,
        resume_point,
        run_setup,
        save_adapter,
        save_merged,
        use_bar_progress,
    )

    fa, data_args, args = config.finetune_args, config.data_args, config.training_args
    device, precision, threads, model_path, tokenizer = run_setup(config)
    check_run_memory(config, model_path, device, precision)
    train_records, eval_records, data_hash = load_records(data_args, fa.task, need_eval=args.do_eval)
    train_rows, eval_rows = preference_rows(train_records), preference_rows(eval_records)
    if fa.task == "kto":
        train_rows, eval_rows = kto_rows(train_rows, args.seed), kto_rows(eval_rows, args.seed)
    if isinstance(train_rows[0].get("chosen", train_rows[0].get("completion")), list):
        ensure_chat_template(tokenizer)
        train_rows, eval_rows = (thinking_off(tool_rows(rows, tokenizer), tokenizer)
                                 for rows in (train_rows, eval_rows))
    check_batch(config, len(train_rows))
    output_dir = Path(args.output_dir)
    fingerprint = run_fingerprint(config, model_path, data_hash)
    resume, finished = resume_point(config, output_dir, fingerprint)
    if finished is not None:
        return finished

    training_args = trl_args(config, device, precision)
    logger.info("Preference tuning %s on %s: task=%s, %s, lora, beta=%g, %d train / %d eval records", model_path,
                device, fa.task, precision, fa.beta, len(train_rows), len(eval_rows))
    logger.info("Compute: %s", compute_summary(device, precision, threads, training=True))
    set_seed(args.seed)
    model = load_base_model(model_path, config, device, precision, tokenizer)
    throughput = ThroughputCallback()
    trainer, undo = build_trainer(config, model, tokenizer, training_args, train_rows, eval_rows,
                                  [throughput, *callbacks], precision)
    use_bar_progress(trainer)
    if len(trainer.train_dataset) < len(train_rows):
        logger.warning("%d of %d training records lost their replies to max_seq_length=%s and were dropped",
                       len(train_rows) - len(trainer.train_dataset), len(train_rows), data_args.max_seq_length)
    if len(trainer.train_dataset) == 0:
        raise DataError(f"Every training record's prompt fills max_seq_length={data_args.max_seq_length}; raise it.")

    metrics: dict = {}
    started = time.perf_counter()
    if args.do_train:
        train_out = trainer.train(resume_from_checkpoint=resume)
        metrics |= {"train_loss": train_out.training_loss, "train_steps": trainer.state.global_step,
                    "train_seconds": round(time.perf_counter() - started, 2),
                    "train_tokens_per_s": throughput.tokens_per_s}
    if args.do_eval and eval_rows:
        evaluated = trainer.evaluate()  # TRL's rewards are beta x the log-ratio against the base model
        names = {"eval_loss": "eval_loss", "eval_rewards/accuracies": "eval_reward_accuracy",
                 "eval_rewards/margins": "eval_reward_margin"}
        metrics |= {ours: evaluated[theirs] for theirs, ours in names.items() if theirs in evaluated}
    undo()
    adapter_dir = merged_dir = None
    if args.do_train and trainer.is_world_process_zero():
        adapter_dir, merged_dir = save_adapter(trainer, tokenizer, config, output_dir)
        counts = {"train_examples": len(trainer.train_dataset), "eval_examples": len(eval_rows),
                  "dropped_by_truncation": len(train_rows) - len(trainer.train_dataset), "sha256": data_hash}
        log_history = trainer.state.log_history
        del trainer, model, undo  # the trained model goes before the merge loads the base again
        gc.collect()
        if adapter_dir is not None:
            merged_dir = save_merged(model_path, adapter_dir, tokenizer, config, output_dir)
        write_metadata(output_dir, config, fingerprint, metrics, log_history, counts, device,
                       precision, threads, model_path)
        if args.do_eval and eval_rows and fa.generation_eval:
            from finetune.evaluate import evaluate_after_training

            evaluate_after_training(output_dir, config)
    return FinetuneResult(output_dir, adapter_dir, merged_dir, metrics)
