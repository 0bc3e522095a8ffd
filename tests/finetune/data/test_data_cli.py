"""`python -m finetune.data` (finetune/data/__main__.py) and the package's import cost."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from finetune.data.__main__ import main
from tests.finetune.data._data_helpers import distinct_chats, write_jsonl

ROOT = Path(__file__).parents[3]


def test_prepare_with_config_input_and_overrides(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", distinct_chats(20))
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({"ingest": {"paths": ["ignored.jsonl"]}, "export": {"format_type": "chatml"}}))
    code = main(["prepare", "--config", str(config), "--input", str(src), "--output-dir", str(tmp_path / "out"),
                 "split.seed=3", "export.min_conversations=0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "records read     20" in out and "train            16 conversations, 16 examples" in out
    assert "text" in json.loads((tmp_path / "out" / "train.jsonl").read_text().splitlines()[0])


def test_config_errors_exit_2_with_the_key(tmp_path, capsys):
    assert main(["prepare", "--input", "x.jsonl", "filter.min_turn=2"]) == 2
    assert "unknown key 'filter.min_turn'; did you mean 'min_turns'?" in capsys.readouterr().err


def test_nothing_to_train_on_exits_1_with_counts(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": "broken"}])
    assert main(["prepare", "--input", str(src), "--output-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "No conversations to train on" in err and "ingest.wrong_type: 1" in err


def test_an_unreadable_source_exits_1_naming_the_file(tmp_path, capsys):
    import sqlite3

    db = tmp_path / "other.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    assert main(["prepare", "--input", str(db), "--output-dir", str(tmp_path / "out")]) == 1
    assert "other.db: an SQLite file without the conversation-log tables" in capsys.readouterr().err


def test_small_data_warning_is_printed(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", distinct_chats(5))
    assert main(["prepare", "--input", str(src), "--output-dir", str(tmp_path / "out")]) == 0
    assert "Training data too small: 5 conversations" in capsys.readouterr().err


def test_config_command_prints_the_effective_config(capsys):
    assert main(["config", "--config", str(ROOT / "configs" / "pipeline_legacy.yaml")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["export"]["format_type"] == "chatml" and printed["filter"]["max_tokens"] == 2048


def test_importing_the_package_loads_no_heavy_library():
    # `finetune` itself may import torch (the trainer); what finetune.data adds on top must stay light.
    code = ("import sys, finetune; before = set(sys.modules); import finetune.data; "
            "new = set(sys.modules) - before; "
            "print(sorted(m for m in new if m.split('.')[0] in "
            "{'torch', 'transformers', 'matplotlib', 'datasketch', 'phonenumbers', 'py3langid', 'datasets'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
