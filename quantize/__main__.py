"""Command line, built from QuantizeConfig's fields (one source of truth with the Python API).

    python -m quantize --config configs/quantize_int4_awq_ov.yaml              # a YAML of QuantizeConfig keys
    python -m quantize --config FILE.yaml --bits 8 --scheme rtn                 # flags override the file
    python -m quantize --model runs/demo/ --backend gguf --scheme q8_0          # no file at all
    python -m quantize compare quantized/ [--model NAME] [--plot out.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import yaml

from quantize.config import QuantizeConfig


def _value(text: str):
    """A flag value parsed like YAML: 4 -> int, true -> bool, null -> None, else the string."""
    return yaml.safe_load(text)


def field_docs() -> dict[str, str]:
    """The docstring under each QuantizeConfig field (the help text of its flag)."""
    import ast
    import inspect

    body = ast.parse(inspect.getsource(QuantizeConfig)).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = str(after.value.value)
    return docs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m quantize", description="Quantize or export a model (values are read as YAML).",
        epilog="Compare artifacts: python -m quantize compare FOLDER [--model NAME] [--plot PNG] [--json FILE]")
    parser.add_argument("--config", help="YAML file of QuantizeConfig keys (unknown keys are an error)")
    docs = field_docs()
    for field in dataclasses.fields(QuantizeConfig):
        parser.add_argument(f"--{field.name}", type=_value, default=argparse.SUPPRESS,
                            help=f"{docs.get(field.name, '')} (default {field.default!r})")
    return parser


def compare_main(argv: list[str]) -> int:
    from quantize.compare import compare_artifacts, format_table, plot

    parser = argparse.ArgumentParser(prog="python -m quantize compare", description="Compare artifacts of a model.")
    parser.add_argument("folder", help="folder holding artifact folders (each with quantization.json)")
    parser.add_argument("--model", default=None, help="only artifacts of this source model (path or name)")
    parser.add_argument("--plot", default=None, help="PNG path (default <folder>/comparison.png)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    by_source = compare_artifacts(args.folder, args.model)
    for source, rows in by_source.items():
        print(f"source: {source}")
        print(format_table(rows))
        print()
    png = plot(by_source, args.plot or Path(args.folder) / "comparison.png")
    print(f"plot: {png}")
    if args.json:
        Path(args.json).write_text(json.dumps(by_source, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if argv[:1] == ["compare"]:
            return compare_main(argv[1:])
        args = vars(build_parser().parse_args(argv))
        path = args.pop("config", None)
        config = QuantizeConfig.from_yaml(path, args) if path else QuantizeConfig.from_dict(args)
        from quantize.api import quantize_model

        output = quantize_model(config)
    except (ValueError, TypeError, FileNotFoundError, ImportError, NotImplementedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(output)
    meta = json.loads((output / "quantization.json").read_text())
    quality = meta.get("quality")
    if quality:
        print(f"weights {meta['weight_bytes'] / 1e6:.1f} MB, perplexity {quality['perplexity']} "
              f"({quality['perplexity_delta_pct']:+.2f}% vs source), greedy agreement {quality['token_agreement']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
