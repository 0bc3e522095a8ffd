"""Preference evaluation: do the models prefer the chosen replies of held-out pairs, and more than the baseline?

    python -m finetune.evaluate --task dpo --data examples/data/aurora_preferences_heldout.jsonl \\
        --models smollm2-135m-instruct runs/demo_aurora_dpo

Each reply is scored by its log-probability given its prompt, summed over the reply's tokens, tokenized as TRL's
DPOTrainer and KTOTrainer tokenize it for training. The first model is the baseline and the reference: a model's
reward for a reply is its log-ratio against the baseline, log p(reply | prompt) - log p_ref(reply | prompt), DPO's
implicit reward in nats (TRL logs it times beta).

- reward_accuracy: % of pairs whose chosen reply gets the higher reward (TRL's rewards/accuracies); of unpaired
  (KTO) examples, % whose reward has the label's sign. 0 for the baseline itself: its rewards are all 0.
- reward_margin: mean reward of the chosen reply minus the rejected one (KTO: mean reward of the examples labelled
  true minus that of those labelled false), in nats.
- preference_accuracy: % of pairs to whose chosen reply the model itself gives the higher log-probability, with no
  reference: the same measure for the baseline and the tuned model, so it shows how far tuning moved it.
- chosen_logp, rejected_logp: the mean log-probabilities (KTO: of the replies labelled true and false).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from finetune.records import PAIR, Record

logger = logging.getLogger(__name__)

MAX_LENGTH = 1024  # TRL's default max_length: the run's max_seq_length where the run is known


def tokenize_preference(tokenizer, row: dict, max_length: int | None = MAX_LENGTH) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reply ids) of each reply of a row (chosen then rejected, or the completion), as TRL's trainers
    tokenize them: the end-of-sequence token ends a plain-text reply, the chat template renders conversations,
    the reply starts where the tokenized prompt stops being a prefix, and the sequence is cut at max_length."""
    from trl.data_utils import common_prefix_length

    replies = [row[k] for k in PAIR] if "chosen" in row else [row["completion"]]
    if isinstance(replies[0], list):
        from finetune.chat_template import generation_prompt

        tools = {"tools": row["tools"]} if row.get("tools") else {}  # rows in their rendering form (tool_rows)
        prompt = tokenizer(generation_prompt(tokenizer, row["prompt"], **tools), add_special_tokens=False)["input_ids"]
        full = [tokenizer.apply_chat_template(row["prompt"] + r, tokenize=True, return_dict=True, **tools)["input_ids"]
                for r in replies]
    else:
        eos = tokenizer.eos_token
        prompt = tokenizer(text=row["prompt"])["input_ids"]
        full = [tokenizer(text=row["prompt"] + (r if r.endswith(eos) else r + eos))["input_ids"] for r in replies]
    start = min(common_prefix_length(prompt, ids) for ids in full)
    out = []
    for ids in full:
        ids = ids[:max_length] if max_length else ids
        out.append((ids[:start], ids[start:]))
    return out


def reply_logps(model, sequences: list[tuple[list[int], list[int]]], batch_size: int = 8) -> list[float]:
    """Summed log-probability of each reply given its prompt under `model` (right-padded batches, no gradient)."""
    scores: list[float] = [0.0] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: -sum(map(len, sequences[i])))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            width = max(sum(map(len, sequences[i])) for i in idx)
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            reply = torch.zeros((len(idx), width), dtype=torch.bool)
            for row, i in enumerate(idx):
                prompt, answer = sequences[i]
                n = len(prompt) + len(answer)
                ids[row, :n] = torch.tensor(prompt + answer)
                mask[row, :n] = 1
                reply[row, len(prompt):n] = True
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            token_logps = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            sums = (token_logps * reply[:, 1:]).sum(-1)
            for row, i in enumerate(idx):
                scores[i] = float(sums[row])
    return scores


def preference_metrics(logps: list[float], ref_logps: list[float], labels: list[bool] | None = None) -> dict:
    """The metrics of the module docstring. Pairs: logps holds chosen, rejected, chosen, rejected, ... (labels None);
    unpaired examples: one logp per example and its label."""
    rewards = [a - b for a, b in zip(logps, ref_logps)]
    if labels is None:
        chosen, rejected = logps[0::2], logps[1::2]
        margins = [c - r for c, r in zip(rewards[0::2], rewards[1::2])]
        return {
            "reward_accuracy": 100 * sum(m > 0 for m in margins) / len(margins),
            "reward_margin": sum(margins) / len(margins),
            "preference_accuracy": 100 * sum(c > r for c, r in zip(chosen, rejected)) / len(chosen),
            "chosen_logp": sum(chosen) / len(chosen),
            "rejected_logp": sum(rejected) / len(rejected),
        }
    good = [r for r, label in zip(rewards, labels) if label]
    bad = [r for r, label in zip(rewards, labels) if not label]
    right = sum((r > 0) if label else (r < 0) for r, label in zip(rewards, labels))

    def mean(values):
        return sum(values) / len(values) if values else None

    return {
        "reward_accuracy": 100 * right / len(rewards),
        "reward_margin": mean(good) - mean(bad) if good and bad else None,
        "chosen_logp": mean([p for p, label in zip(logps, labels) if label]),
        "rejected_logp": mean([p for p, label in zip(logps, labels) if not label]),
    }


def evaluate_preferences(models: list[str], config, records: list[Record] | None = None,
                         max_length: int = MAX_LENGTH) -> dict:
    """Score every model on the same held-out preference records (the first model is the reference); write the
    report as finetune.evaluate does and return the results."""
    from finetune.chat_template import ensure_chat_template
    from finetune.evaluate.data import EvalError
    from finetune.evaluate.generation import load_engine, resolve_model
    from finetune.evaluate.report import write_report
    from finetune.evaluate.run import RunResult, _default_output, _results
    from finetune.preference import preference_rows, tool_rows
    from finetune.records import DataError, check_records, read_records

    if not models:
        raise EvalError("No model to evaluate: pass at least one model (the first is the reference).")
    source = config.data or "the held-out records"
    if records is None:
        if not config.data:
            raise EvalError("No eval data: set EvalConfig.data (CLI: --data) to a file of held-out preferences.")
        records = read_records(config.data)
    try:
        check_records(records, config.task, source)
    except DataError as err:
        raise EvalError(f"Cannot evaluate task={config.task!r} on {source}: {err}") from None
    rows = preference_rows(records[: config.max_examples] if config.max_examples else records)
    labels = None if "chosen" in rows[0] else [row["label"] for row in rows]
    labels_given = config.labels or []
    specs = [dataclasses.replace(resolve_model(m, labels_given[i] if i < len(labels_given) else None,
                                               config.allow_download), trust_remote_code=config.trust_remote_code)
             for i, m in enumerate(models)]
    runs, reference, sequences = [], None, None
    for spec in specs:
        if spec.is_openvino:
            raise EvalError(f"{spec.label} is an OpenVINO IR, which returns no log-probabilities to score replies "
                            f"with: evaluate its fine-tune run folder (or merged/) instead")
        logger.info("Scoring %s (%s) on %d held-out records", spec.label, spec.path, len(rows))
        engine = load_engine(spec, config.dtype)
        try:
            started = time.perf_counter()
            if sequences is None:  # one tokenizer for every model, so each scores the same tokens
                if isinstance(rows[0].get("chosen", rows[0].get("completion")), list):
                    ensure_chat_template(engine.tokenizer)
                    rows = tool_rows(rows, engine.tokenizer)
                sequences = [s for row in rows for s in tokenize_preference(engine.tokenizer, row, max_length)]
            logps = reply_logps(engine.model, sequences, config.batch_size)
        finally:
            engine.close()
        reference = reference or logps
        metrics = preference_metrics(logps, reference, labels)
        seconds = round(time.perf_counter() - started, 2)
        metrics |= {"examples": len(rows), "generation_seconds": seconds}
        runs.append(RunResult(spec.label, spec.label, "torch", False, 0, metrics, seconds))
        logger.info("%s: %s", spec.label, ", ".join(f"{k}={v:.2f}" for k, v in metrics.items()
                                                    if isinstance(v, float)))
    results = _results(specs, runs, config, rows)  # adds each run's change against the baseline
    out_dir = Path(config.output_dir) if config.output_dir else _default_output(specs)
    write_report(results, out_dir, specs, plots=config.plots)
    results["output_dir"] = str(out_dir)
    return results
