"""Command line, built from QuantizeConfig's fields (one source of truth with the Python API).

    python -m quantize --config configs/quantize_int4_awq_ov.yaml              # a YAML of QuantizeConfig keys
    python -m quantize --config FILE.yaml --bits 8 --scheme rtn                 # flags override the file
    python -m quantize --config FILE.yaml bits=8 scheme=rtn                     # so do key=value overrides
    python -m quantize --model runs/demo/ --backend gguf --scheme q8_0          # no file at all
    python -m quantize compare quantized/ [--model NAME] [--plot out.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from finetune.config_binding import add_config_flags, config_overrides, load_config
from finetune.memory import InsufficientMemoryError
from quantize.artifacts import QUANTIZATION_METADATA_FILE
from quantize.config import QuantizeConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m quantize", description="Quantize or export a model (values are read as YAML).",
        epilog="Compare artifacts: python -m quantize compare FOLDER [--model NAME] [--plot PNG] [--json FILE]")
    parser.add_argument("--config", help="YAML file of QuantizeConfig keys (unknown keys are an error)")
    add_config_flags(parser, QuantizeConfig)
    return parser


def parse_config(argv: list[str]) -> QuantizeConfig:
    """The config a command line names: its --config file, then key=value overrides, then flags."""
    args = build_parser().parse_args(argv)
    return load_config(QuantizeConfig, args.config, config_overrides(args))


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
        config = parse_config(argv)
        from quantize.api import quantize_model

        output = quantize_model(config)
    except (ValueError, TypeError, FileNotFoundError, ImportError, NotImplementedError,
            InsufficientMemoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(output)
    meta = json.loads((output / QUANTIZATION_METADATA_FILE).read_text())
    quality = meta.get("quality")
    if quality:
        print(f"weights {meta['weight_bytes'] / 1e6:.1f} MB, perplexity {quality['perplexity']} "
              f"({quality['perplexity_delta_pct']:+.2f}% vs source), greedy agreement {quality['token_agreement']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
