"""`neuralchat <verb>`: every verb reaches its stage's own command line, and the console script is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from neural_chat_app.cli import VERBS, main


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_answers_help(verb, capsys):
    try:
        code = main([verb, "--help"])
    except SystemExit as stop:  # argparse and HfArgumentParser exit after printing help
        code = stop.code
    out = capsys.readouterr().out
    assert code in (0, None), out
    assert "usage" in out.lower() or "python -m" in out, out[:500]


def test_an_unknown_verb_is_named_with_the_known_ones(capsys):
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "'train'" in err and "finetune" in err and "serve" in err


def test_the_console_script_runs_the_doctor():
    script = Path(sys.executable).with_name("neuralchat")
    script = script if script.is_file() else shutil.which("neuralchat")
    assert script, "the neuralchat console script is not installed: pip install -e . (scripts/setup.sh)"
    out = subprocess.run([str(script), "doctor"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "bf16" in out.stdout or "fp32" in out.stdout, out.stdout[-2000:]


def test_a_verb_passes_its_arguments_unchanged(tmp_path, capsys):
    """`neuralchat export-log` is `python -m neural_chat_app export-log`: a missing log file is its own error."""
    code = main(["export-log", "--db", str(tmp_path / "missing.sqlite"), "--output", str(tmp_path / "out.jsonl")])
    assert code == 2
    assert "missing.sqlite" in capsys.readouterr().err


def test_every_user_error_class_is_one_kind(capsys, monkeypatch):
    """Data, config, eval, schema and launch errors share one base; neuralchat prints any of them without a
    traceback and exits 2."""
    from finetune import UserError
    from finetune.config_binding import ConfigError
    from finetune.evaluate.data import EvalError
    from finetune.extraction import SchemaError
    from finetune.launch import LaunchError
    from finetune.records import DataError

    assert all(issubclass(cls, UserError) for cls in (ConfigError, EvalError, SchemaError, LaunchError, DataError))
    import finetune.data.__main__ as data_main

    def refuse(argv):
        raise SchemaError("field 'age' in extraction.schema.json: expected an integer; fix the schema")

    monkeypatch.setattr(data_main, "main", refuse)
    assert main(["data", "prepare"]) == 2
    assert "error: field 'age'" in capsys.readouterr().err


def _config_classes(verb: str) -> list[type]:
    if verb == "finetune":
        from finetune.config import DataArguments, FinetuningArguments, ModelArguments, TrainingArguments

        return [ModelArguments, DataArguments, FinetuningArguments, TrainingArguments]
    if verb == "evaluate":
        from finetune.evaluate import EvalConfig

        return [EvalConfig]
    if verb == "quantize":
        from quantize.config import QuantizeConfig

        return [QuantizeConfig]
    if verb == "serve":
        from neural_chat_app.server.settings import ChatLogSettings, Limits, ServerSettings

        return [ServerSettings, Limits, ChatLogSettings]
    if verb == "improve":
        from neural_chat_app.improve import LoopConfig

        return [LoopConfig]
    from finetune.data.config import CleanConfig, DedupConfig, ExportConfig, FilterConfig, IngestConfig, SplitConfig

    return [IngestConfig, CleanConfig, FilterConfig, DedupConfig, ExportConfig, SplitConfig]


@pytest.mark.parametrize("argv", [["finetune"], ["evaluate"], ["quantize"], ["serve"], ["improve"],
                                  ["data", "prepare"]], ids=lambda argv: argv[0])
def test_every_config_help_lists_each_field_docstring(argv, capsys):
    """The flags (or key=value keys) of each command line come from its config dataclasses, and --help shows the
    string under each field; a field without one would show nothing."""
    from finetune.config_binding import field_docs

    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    docs = {name: doc for cls in _config_classes(argv[0]) for name, doc in field_docs(cls).items()}
    if argv[0] == "serve":
        docs.pop("api_keys")  # kept off the command line, where `ps` shows it
        docs.pop("admin_keys")
    if argv[0] == "finetune":  # transformers documents its own fields; ours are the four classes' own strings
        ours = {"overwrite_output_dir", "evaluation_strategy"}
        import transformers

        docs = {k: v for k, v in docs.items() if k in ours or k not in field_docs(transformers.TrainingArguments)}
    missing = [name for name, doc in docs.items() if "".join(doc.split()) not in shown]
    assert docs and not missing, missing


def test_serve_flags_and_overrides_reach_the_settings(monkeypatch):
    from finetune.config_binding import config_overrides
    from neural_chat_app.__main__ import build_parser
    from neural_chat_app.server import load_settings

    monkeypatch.chdir(Path(__file__).parents[1])
    args = build_parser().parse_args(["serve", "--config", "configs/server.yaml", "limits.max_queue=3", "--port",
                                      "8001", "--no-log", "--allow-download", "--limits.max-concurrent", "2"])
    settings = load_settings(args.config, config_overrides(args))
    assert (settings.port, settings.allow_download, settings.chat_log.enabled) == (8001, True, False)
    assert (settings.limits.max_queue, settings.limits.max_concurrent, settings.host) == (3, 2, "127.0.0.1")
    with pytest.raises(ValueError, match="server.yaml: unknown key 'limits.max_qeue'; did you mean 'max_queue'"):
        load_settings("configs/server.yaml", ["limits.max_qeue=3"])
