"""Build the tokenized train and eval sets of a run from DataArguments."""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from finetune.chat_template import ensure_chat_template
from finetune.config import DataArguments
from finetune.formatting import FormatOptions, pack_examples, tokenize_record
from finetune.records import DataError, Record, check_records, read_records

logger = logging.getLogger(__name__)


@dataclass
class TokenizedData:
    train: list[dict]
    eval: list[dict]
    data_hash: str
    counts: dict = field(default_factory=dict)


def _load_hub_or_folder(data_args: DataArguments) -> tuple[list[Record], list[Record]]:
    import datasets

    ds = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    train = [Record(dict(r), f"{data_args.dataset_name}[train][{i}]") for i, r in enumerate(ds["train"])]
    eval_split = next((s for s in ("validation", "test") if s in ds), None)
    evals = [] if eval_split is None else [
        Record(dict(r), f"{data_args.dataset_name}[{eval_split}][{i}]") for i, r in enumerate(ds[eval_split])
    ]
    return train, evals


def _file_hash(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_records(data_args: DataArguments, task: str, need_eval: bool) -> tuple[list[Record], list[Record], str]:
    """Read, check and split the records; return (train, eval, sha256 of the data files)."""
    if data_args.train_file is None and data_args.dataset_name is None:
        raise DataError(
            "No training data: set data_args.train_file (a .json, .jsonl or .csv file; on the command line "
            "--train_file) or data_args.dataset_name."
        )
    if data_args.train_file is not None:
        train = read_records(data_args.train_file)
        evals = read_records(data_args.validation_file) if data_args.validation_file else []
        data_hash = _file_hash([p for p in (data_args.train_file, data_args.validation_file) if p])
    else:
        train, evals = _load_hub_or_folder(data_args)
        data_hash = hashlib.sha256(f"{data_args.dataset_name}:{data_args.dataset_config_name}".encode()).hexdigest()
    check_records(train, task, data_args.train_file or data_args.dataset_name,
                  data_args.prompt_column, data_args.response_column)
    if evals:
        check_records(evals, task, data_args.validation_file or data_args.dataset_name,
                      data_args.prompt_column, data_args.response_column)
    elif need_eval and data_args.validation_split_percentage:
        train, evals = split_records(train, data_args.validation_split_percentage, data_args.dataset_seed)
    if data_args.max_train_samples:
        train = train[: data_args.max_train_samples]
    if data_args.max_eval_samples:
        evals = evals[: data_args.max_eval_samples]
    return train, evals, data_hash


def split_records(records: list[Record], percentage: int, seed: int) -> tuple[list[Record], list[Record]]:
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(records) * percentage / 100))
    if n_eval >= len(records):
        raise DataError(f"validation_split_percentage={percentage} of {len(records)} records leaves nothing to "
                        f"train on; lower it or pass a validation_file.")
    eval_ids = set(order[:n_eval])
    return ([r for i, r in enumerate(records) if i not in eval_ids],
            [r for i, r in enumerate(records) if i in eval_ids])


def tokenize_records(tokenizer, records: list[Record], opts: FormatOptions) -> tuple[list[dict], int]:
    """Tokenize; return the examples and how many were dropped because truncation left no label."""
    if opts.task in ("chat", "extraction"):
        ensure_chat_template(tokenizer)
    examples, dropped = [], 0
    for record in records:
        try:
            example = tokenize_record(tokenizer, record.data, opts)
        except DataError as err:
            raise DataError(f"{record.where}: {err}") from None
        if example is None:
            dropped += 1
            logger.warning("%s: no target token left within max_seq_length=%d; skipped", record.where,
                           opts.max_seq_length)
        else:
            examples.append(example)
    return examples, dropped


def build_datasets(tokenizer, data_args: DataArguments, task: str, train_on_inputs: bool,
                   need_eval: bool) -> TokenizedData:
    train_records, eval_records, data_hash = load_records(data_args, task, need_eval)
    opts = FormatOptions(
        task=task,
        max_seq_length=data_args.max_seq_length or 512,
        train_on_inputs=train_on_inputs,
        max_source_length=data_args.max_source_length,
        max_target_length=data_args.max_target_length,
        prompt_column=data_args.prompt_column,
        response_column=data_args.response_column,
    )
    train, dropped_train = tokenize_records(tokenizer, train_records, opts)
    evals, dropped_eval = tokenize_records(tokenizer, eval_records, opts)
    if not train:
        raise DataError(f"All {len(train_records)} training examples lost their targets to truncation at "
                        f"max_seq_length={opts.max_seq_length}; raise max_seq_length.")
    counts = {
        "train_examples": len(train),
        "eval_examples": len(evals),
        "dropped_by_truncation": dropped_train + dropped_eval,
        "train_tokens": sum(len(e["input_ids"]) for e in train),
        "train_label_tokens": sum(sum(1 for x in e["labels"][1:] if x != -100) for e in train),
    }
    if data_args.dataset_concatenation:
        train = pack_examples(train, opts.max_seq_length)
        counts["train_packed_rows"] = len(train)
    return TokenizedData(train=train, eval=evals, data_hash=data_hash, counts=counts)


def source_files(data_args: DataArguments) -> list[str]:
    return [str(Path(p).resolve()) for p in (data_args.train_file, data_args.validation_file) if p]
