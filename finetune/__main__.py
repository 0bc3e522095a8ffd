"""Command line: `python -m finetune [flags]` or `python -m finetune config.yaml [flags]`.

The flags are the fields of ModelArguments, DataArguments, transformers' TrainingArguments and
FinetuningArguments, parsed by transformers' HfArgumentParser, so NeuralChat launch lines work unchanged:

    python -m finetune --model_name_or_path smollm2-135m-instruct --bf16 True --train_file data.json \\
        --dataset_concatenation --task completion --do_train --output_dir out --peft lora

Multi-process (DDP, gloo on CPU): torchrun --nproc_per_node 2 -m finetune ...
Subcommands: `python -m finetune doctor` (what this machine can do), `python -m finetune launch` (multi-process
and multi-node runs with per-rank threads and affinity; see finetune/launch.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def parser():
    # transformers is imported here, not at the top: `doctor` must run (and say so) where it is missing
    from transformers import HfArgumentParser

    from finetune.config import DataArguments, FinetuningArguments, ModelArguments, TrainingArguments

    return HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, FinetuningArguments))


def parse_config(argv: list[str]):
    """Flags, or a YAML/JSON file (first argument) whose keys are the same field names; later flags override."""
    p = parser()
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        path = Path(argv[0])
        if not path.is_file():
            raise SystemExit(f"Config file not found: {path}")
        import yaml

        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"{path}: expected a mapping of field names to values at the top level")
        known = {action.dest for action in p._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"{path}: unknown field(s) {', '.join(unknown)}; see python -m finetune --help")
        argv = [a for k, v in values.items() for a in _as_flags(k, v)] + argv[1:]
    model_args, data_args, training_args, finetune_args = p.parse_args_into_dataclasses(args=argv)
    from finetune.config import TextGenerationFinetuningConfig

    return TextGenerationFinetuningConfig(model_args, data_args, training_args, finetune_args)


def _as_flags(key: str, value) -> list[str]:
    if isinstance(value, list):
        return [f"--{key}", *map(str, value)]
    if isinstance(value, dict):
        import json

        return [f"--{key}", json.dumps(value)]
    return [f"--{key}", str(value)]


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
