"""`python -m finetune.data prepare --config configs/pipeline.yaml [section.key=value ...]`.

Every setting lives in DataPipelineConfig; the command line only names the YAML file and overrides keys of
it (`filter.min_turns=2`), with `--input`/`--output-dir` as shorthands for the two that change every run.
`python -m finetune.data pairs --input chat-export.json --format dpo --output pairs.jsonl` writes the preference
rows of exported chat histories (finetune.data.chat_exports).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import asdict

from finetune.config_binding import ConfigError, fields_help
from finetune.data.config import DataPipelineConfig
from finetune.data.pipeline import NoConversationsError, SmallDatasetWarning, prepare_dataset
from finetune.data.records import SourceError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finetune.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    keys = "every key of the config, set by section.key=value (the value read as YAML):\n" + fields_help(
        DataPipelineConfig)
    prep = sub.add_parser("prepare", help="ingest, clean, filter, dedup, split and export conversations",
                          epilog=keys, formatter_class=argparse.RawDescriptionHelpFormatter)
    prep.add_argument("--config", help="pipeline YAML (sections ingest, clean, filter, dedup, export, split)")
    prep.add_argument("--input", action="append", default=[], help="file or folder to read (repeatable); "
                      "replaces ingest.paths")
    prep.add_argument("--output-dir", help="replaces export.output_dir")
    prep.add_argument("overrides", nargs="*", metavar="section.key=value", help="override one config key")
    pairs = sub.add_parser("pairs", help="preference rows from exported chat histories (ChatGPT, Open WebUI): DPO "
                                         "pairs of the reply kept over each one regenerated away, or KTO's rated "
                                         "replies")
    pairs.add_argument("--input", action="append", required=True, help="conversations.json or an Open WebUI "
                       "export (repeatable)")
    pairs.add_argument("--format", choices=["dpo", "kto"], default="dpo")
    pairs.add_argument("--output", required=True, help="JSONL file to write (the data pipeline and finetune read "
                                                       "it as it is)")
    show = sub.add_parser("config", help="print the effective config as YAML and exit", epilog=keys,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("--config")
    show.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser


def load_config(args: argparse.Namespace) -> DataPipelineConfig:
    overrides = list(args.overrides)
    if getattr(args, "input", None):
        overrides.append(f"ingest.paths={json.dumps(args.input)}")
    if getattr(args, "output_dir", None):
        overrides.append(f"export.output_dir={json.dumps(args.output_dir)}")
    if args.config:
        return DataPipelineConfig.from_yaml(args.config, overrides)
    return DataPipelineConfig.from_dict({}, overrides)


def summary(stats: dict) -> str:
    lines = [f"records read     {stats['records_read']}",
             f"records written  {stats['records_written']}",
             f"records rejected {stats['records_rejected']}"]
    lines += [f"  {reason:<24} {n}" for reason, n in stats["rejected_by_reason"].items()]
    lines += [f"redactions       {stats['redactions'] or 'none'}"]
    lines += [f"{split:<16} {c['conversations']} conversations, {c['examples']} examples"
              for split, c in stats["splits"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pairs":
            from finetune.data.chat_exports import export_pairs

            print(json.dumps(export_pairs(args.input, args.output, args.format), indent=2))
            return 0
        cfg = load_config(args)
        if args.command == "config":
            import yaml

            print(yaml.safe_dump(asdict(cfg), sort_keys=False), end="")
            return 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallDatasetWarning)  # printed below from the stats, once
            result = prepare_dataset(cfg)
    except (ConfigError, FileNotFoundError, SourceError, NoConversationsError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    for message in result.stats["warnings"]:
        print(f"warning: {message}", file=sys.stderr)
    print(summary(result.stats))
    for split, path in result.splits.items():
        print(f"wrote {split}: {path}")
    print(f"stats: {result.output_dir / 'stats.json'}  rejects: {result.rejects}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
