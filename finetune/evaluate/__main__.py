"""Command line: compare models on held-out data and write a report next to the last one.

    python -m finetune.evaluate --task extraction --data examples/data/extraction_heldout.jsonl \\
        --models smollm2-135m-instruct runs/extraction --base-few-shot 3 --constrained both

The first model is the baseline. A model is an embedded name, a Hugging Face folder, a `finetune_model` output
folder (its merged/ or adapter/), a .gguf file, or an OpenVINO IR folder (e.g. a quantized artifact).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    """--models, then one flag per EvalConfig field (its docstring is the help), e.g. --max-examples 50."""
    from finetune.config_binding import add_config_flags
    from finetune.evaluate import EvalConfig

    p = argparse.ArgumentParser(prog="python -m finetune.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="models to compare; the first is the baseline")
    add_config_flags(p, EvalConfig, aliases={"output_dir": ["--out"]}, required=["data"])
    return p


def parse_config(args: argparse.Namespace):
    """The EvalConfig the flags set; off the extraction task nothing is decoded under a schema."""
    from finetune.config_binding import config_overrides, load_config
    from finetune.evaluate import EvalConfig

    config = load_config(EvalConfig, overrides=config_overrides(args))
    return config if config.task == "extraction" else dataclasses.replace(config, constrained="off")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from finetune.evaluate import evaluate_models, summary_table
    from finetune.extraction import SchemaError
    from finetune.records import DataError

    try:
        results = evaluate_models(args.models, parse_config(args))
    except (ValueError, DataError, SchemaError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary_table(results))
    print(f"report: {results['output_dir']}/eval_report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
