"""Command line: compare models on held-out data and write a report next to the last one.

    python -m finetune.evaluate --task extraction --data examples/data/extraction_heldout.jsonl \\
        --models smollm2-135m-instruct runs/extraction --base-few-shot 3 --constrained both

The first model is the baseline. A model is an embedded name, a Hugging Face folder, a `finetune_model` output
folder (its merged/ or adapter/), a .gguf file, or an OpenVINO IR folder (e.g. a quantized artifact).
"""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    from finetune.config import TASKS

    p = argparse.ArgumentParser(prog="python -m finetune.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="models to compare; the first is the baseline")
    p.add_argument("--labels", nargs="+", help="names of the models in the report")
    p.add_argument("--data", required=True, help="held-out records (.json, .jsonl or .csv)")
    p.add_argument("--task", default="extraction", choices=TASKS)
    p.add_argument("--max-examples", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--constrained", default="both", choices=["off", "on", "both"],
                   help="extraction: decode under the JSON schema (on), not (off), or report both")
    p.add_argument("--few-shot", type=int, default=0, help="extraction: worked examples for every model")
    p.add_argument("--base-few-shot", type=int, help="extraction: worked examples for the baseline only")
    p.add_argument("--schema", help="JSON Schema file (default: finetune/schemas/extraction.schema.json)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--no-perplexity", action="store_true", help="skip the perplexity pass")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--allow-download", action="store_true",
                   help="download a hub id that is not in the Hugging Face cache (else an error says how)")
    p.add_argument("--trust-remote-code", action="store_true", help="run the code a model's folder ships")
    p.add_argument("--out", help="report folder (default: <last model>/eval)")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from finetune.evaluate import EvalConfig, evaluate_models, summary_table
    from finetune.extraction import SchemaError
    from finetune.records import DataError

    try:
        config = EvalConfig(
            task=args.task, data=args.data, max_examples=args.max_examples, max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size, constrained=args.constrained if args.task == "extraction" else "off",
            few_shot=args.few_shot, base_few_shot=args.base_few_shot, schema=args.schema, dtype=args.dtype,
            perplexity=not args.no_perplexity, output_dir=args.out, labels=args.labels, plots=not args.no_plots,
            allow_download=args.allow_download, trust_remote_code=args.trust_remote_code)
        results = evaluate_models(args.models, config)
    except (ValueError, DataError, SchemaError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary_table(results))
    print(f"report: {results['output_dir']}/eval_report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
