"""Every command line a config file's header documents parses as written: its module, verb, flags and the config
file it names (without running the stage). A documented command that the CLI would reject fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `python -m`) for each `python -m ...` in the comment header of configs/*.yaml."""
    found = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("#").strip())
        text = re.sub(r"\\\s+", " ", "\n".join(header))  # shell line continuations
        for match in re.finditer(r"python -m ([\w.]+)([^\n(`]*)", text):
            line = re.sub(r"\[[^\]]*\]", "", match.group(2))  # optional parts: [--model runs/my-finetune/]
            line = re.sub(r"<[^>]*>", "x", line)  # placeholders: quantized/<model>-int8-...
            found.append((f"{path.name}: python -m {match.group(1)}{match.group(2).rstrip()}",
                          [match.group(1), *shlex.split(line)]))
    return found


def _parses(argv: list[str]) -> None:
    module, args = argv[0], argv[1:]
    if module == "finetune":
        from finetune.__main__ import parse_config

        parse_config(args)
    elif module == "quantize":
        from quantize.__main__ import parse_config

        parse_config(args)
    elif module == "finetune.data":
        from finetune.data.__main__ import build_parser, load_config

        load_config(build_parser().parse_args(args))
    elif module == "finetune.evaluate":
        from finetune.evaluate.__main__ import build_parser

        build_parser().parse_args(args)
    elif module == "finetune.extraction.generate":
        from finetune.extraction.generate import build_parser

        build_parser().parse_args(args)
    elif module == "neural_chat_app":
        from neural_chat_app.__main__ import build_parser

        parsed = build_parser().parse_args(args)
        if parsed.command == "serve" and parsed.config:
            from neural_chat_app.server import load_settings

            load_settings(parsed.config)
        if parsed.command == "improve":
            from neural_chat_app.improve import LoopConfig

            LoopConfig.from_yaml(parsed.config)
    elif module == "benchmarks":
        from benchmarks.__main__ import COMMANDS

        assert args[0] in COMMANDS, args
    else:
        raise AssertionError(f"a documented command runs a module this test does not know: {module}")


COMMANDS = documented_commands()


def test_the_config_headers_document_commands():
    assert len(COMMANDS) >= 15, COMMANDS


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS], ids=[where for where, _ in COMMANDS])
def test_a_documented_command_parses(argv, monkeypatch):
    monkeypatch.chdir(ROOT)  # the headers name files relative to the repository root
    try:
        _parses(argv)
    except SystemExit as stop:  # argparse's way of refusing a command line
        raise AssertionError(f"python -m {shlex.join(argv)} is refused (exit {stop.code})") from stop
