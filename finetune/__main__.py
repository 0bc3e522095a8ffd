"""Command line: `python -m finetune [flags]` or `python -m finetune config.yaml [flags]`.

The flags are the fields of ModelArguments, DataArguments, transformers' TrainingArguments and
FinetuningArguments, parsed by transformers' HfArgumentParser, so NeuralChat launch lines work unchanged:

    python -m finetune --model_name_or_path smollm2-135m-instruct --bf16 True --train_file data.json \\
        --dataset_concatenation --task completion --do_train --output_dir out --peft lora

A YAML file of the same names works too, then flags or `key=value` overrides: python -m finetune run.yaml lora_rank=16
Multi-process (DDP, gloo on CPU): torchrun --nproc_per_node 2 -m finetune ...
Subcommands: `python -m finetune doctor` (what this machine can do), `python -m finetune launch` (multi-process
and multi-node runs with per-rank threads and affinity; see finetune/launch.py).
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path


def parser():
    # transformers is imported here, not at the top: `doctor` must run (and say so) where it is missing
    from transformers import HfArgumentParser

    from finetune.config import SECTIONS
    from finetune.config_binding import field_docs

    p = HfArgumentParser(tuple(SECTIONS.values()), epilog=(
        "A config file first, then flags and key=value overrides (the value read as YAML): python -m finetune "
        "configs/demo_aurora.yaml --max_steps 5 lora_rank=8. The file holds these flags' names as keys."))
    docs = {name: doc for cls in SECTIONS.values() for name, doc in field_docs(cls).items()}
    for action in p._actions:  # our fields are documented by the string under them, transformers' by metadata
        if not action.help and action.dest in docs:
            action.help = docs[action.dest].replace("%", "%%")
    return p


def parse_config(argv: list[str]):
    """Flags, or a YAML/JSON file (first argument) whose keys are the same field names; then `key=value`
    overrides and flags override the file. The file's values are checked by the config binder (unknown keys and
    wrong types are named) and become the flags' defaults: nothing is turned back into command-line text."""
    from finetune.config import TextGenerationFinetuningConfig, split_sections
    from finetune.config_binding import ConfigError, apply_overrides, read_yaml

    p = parser()
    values, where = {}, ""
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        path = Path(argv[0])
        if not path.is_file():
            raise SystemExit(f"Config file not found: {path}")
        values, where, argv = read_yaml(path), str(path), argv[1:]
    _, unknown = p.parse_known_args(argv)
    overrides = [a for a in unknown if _OVERRIDE.match(a)]
    argv = [a for a in argv if a not in overrides]
    if values or overrides:
        try:
            sections = split_sections(apply_overrides(values, overrides))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}" if where else str(err)) from None
        p.set_defaults(**{key: value for section in sections.values() for key, value in section.items()})
    model_args, data_args, training_args, finetune_args = p.parse_args_into_dataclasses(args=argv)
    return TextGenerationFinetuningConfig(model_args, data_args, training_args, finetune_args)


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def main(argv: list[str] | None = None) -> int:
    """`python -m finetune` and the `neuralchat-finetune` script: the subcommands, or training.

    Called as the process's entry point (argv None), training first re-executes the process once on tcmalloc or
    jemalloc where the machine has one (finetune.allocator: about 1.3x faster on varied-length batches)."""
    entry = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["doctor"]:
        from finetune.doctor import main as doctor_main

        return doctor_main(argv[1:])
    if argv[:1] == ["launch"]:
        from finetune.launch import main as launch_main

        return launch_main(argv[1:])
    if entry:
        from finetune.allocator import reexec_with_allocator

        reexec_with_allocator("finetune", argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = parse_config(argv)
        from finetune.train import finetune_model

        result = finetune_model(config)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, value in result.metrics.items():
        print(f"{key}: {value}")
    if result.merged_dir:
        print(f"merged model: {result.merged_dir}")
    if result.adapter_dir:
        print(f"adapter: {result.adapter_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
