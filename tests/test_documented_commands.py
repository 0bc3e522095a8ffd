"""Every command line a config file's header or the README documents parses as written: its module, verb, flags and
the config file it names (without running the stage). A documented command that the CLI would reject fails here."""

from __future__ import annotations

import argparse
import importlib
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


def readme_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `python -m`) for each command in the README's bash blocks: `python -m ...` (with or without
    .venv/bin/) and `neuralchat <verb> ...`, which runs the same module (neural_chat_app/cli.py)."""
    from neural_chat_app.cli import VERBS

    text = (ROOT / "README.md").read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line.replace("...", "x"), comments=True)
            words = [re.sub(r"<[^>]*>", "x", w) for w in words]
            if words[:2] == [".venv/bin/python", "-m"] or words[:2] == ["python", "-m"]:
                found.append((f"README: {line.strip()}", words[2:]))
            elif words[:1] == ["neuralchat"] and len(words) > 1:
                module, prefix = VERBS[words[1]]
                found.append((f"README: {line.strip()}", [module.removesuffix(".__main__"), *prefix, *words[2:]]))
    return found


class _Parsed(BaseException):  # not an Exception: the entry points catch those and would report an error
    pass


def _parses_in_main(module: str, args: list[str], monkeypatch) -> None:
    """Run the module's main(args) until its command line is parsed (argparse's parse_args, which also refuses
    unknown arguments), and stop there: only for mains that parse with it before doing anything."""
    real = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, *a, **kw):
        real(self, *a, **kw)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    try:
        importlib.import_module(module).main(args)
    except _Parsed:
        return
    raise AssertionError(f"python -m {module} {shlex.join(args)} returned without parsing a command line")


def _parses(argv: list[str], monkeypatch=None) -> None:
    module, args = argv[0], argv[1:]
    if module == "finetune" and args[:1] == ["doctor"]:
        _parses_in_main("finetune.doctor", args[1:], monkeypatch)
    elif module == "finetune" and args[:1] == ["launch"]:
        from finetune.launch import build_parser

        before = args[1:args.index("--")] if "--" in args else args[1:]
        build_parser().parse_known_args(before)  # what launch() parses; the rest goes to each finetune process
    elif module == "quantize" and args[:1] == ["compare"]:
        _parses_in_main("quantize.__main__", args, monkeypatch)
    elif module == "finetune":
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
    elif module in ("finetune.extraction.natural", "quantize.web_page"):
        _parses_in_main(module, args, monkeypatch)
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
        _parses_in_main(COMMANDS[args[0]], args[1:], monkeypatch)
    else:
        raise AssertionError(f"a documented command runs a module this test does not know: {module}")


COMMANDS = documented_commands() + readme_commands()


def test_the_config_headers_document_commands():
    assert len(COMMANDS) >= 15, COMMANDS


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS], ids=[where for where, _ in COMMANDS])
def test_a_documented_command_parses(argv, monkeypatch):
    monkeypatch.chdir(ROOT)  # the headers name files relative to the repository root
    try:
        _parses(argv, monkeypatch)
    except SystemExit as stop:  # argparse's way of refusing a command line
        raise AssertionError(f"python -m {shlex.join(argv)} is refused (exit {stop.code})") from stop


# --- every shipped config loads with the loader of its kind ----------------------------------------------------

def shipped_configs() -> list[Path]:
    """The YAML files the repository ships for users: configs/ and examples/."""
    return sorted([*(ROOT / "configs").glob("*.yaml"), *(ROOT / "examples").rglob("*.yaml")])


def _config_kind(path: Path) -> str | None:
    """The kind of a shipped config, by the rule the test that loads it selects it by."""
    kind = next((k for k in ("server", "improve", "quantize", "pipeline") if path.name.startswith(k)), None)
    if kind is None and "python -m finetune " in path.read_text():  # tests/finetune/test_config.py
        kind = "finetune"
    if kind is None and path.name == "prices.yaml":  # tests/benchmarks/test_report.py
        kind = "prices"
    return kind


def test_every_shipped_config_is_of_a_kind_a_test_loads():
    """A new config is loaded by a test only if it has a kind: name it server*, improve* (here), quantize*
    (tests/quantize/test_quantize_config.py) or pipeline* (tests/finetune/data/test_data_config.py), or give it a
    `python -m finetune` header."""
    assert [p.name for p in shipped_configs() if _config_kind(p) is None] == []


@pytest.mark.parametrize("path", [p for p in shipped_configs() if _config_kind(p) == "server"], ids=lambda p: p.name)
def test_a_server_config_loads(path, monkeypatch):
    from neural_chat_app.server.settings import ServerSettings, load_settings

    monkeypatch.chdir(ROOT)
    assert isinstance(load_settings(path), ServerSettings)


@pytest.mark.parametrize("path", [p for p in shipped_configs() if _config_kind(p) == "improve"], ids=lambda p: p.name)
def test_an_improve_config_loads(path, monkeypatch):
    from neural_chat_app.improve import LoopConfig

    monkeypatch.chdir(ROOT)
    assert isinstance(LoopConfig.from_yaml(path), LoopConfig)


def test_the_server_and_improve_configs_are_found():
    kinds = [_config_kind(p) for p in shipped_configs()]
    assert kinds.count("server") >= 2 and kinds.count("improve") >= 1
