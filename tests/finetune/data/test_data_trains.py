"""The issue's 'done when': the CLI turns a mixed folder of logs into splits that finetune_model trains on.

pytest -m integration tests/finetune/data/test_data_trains.py
"""

import json
import shutil

import pytest

from finetune.data.__main__ import main
from tests.finetune.data._data_helpers import distinct_chats, make_chatlog, write_jsonl

pytestmark = pytest.mark.integration


def test_cli_splits_train_directly_with_finetune_model(fixtures_dir, tiny_model_dir, tmp_path):
    from finetune import finetune_model
    from tests.finetune.conftest import tiny_config

    logs = tmp_path / "logs"
    shutil.copytree(fixtures_dir, logs)
    write_jsonl(logs / "more.jsonl", distinct_chats(30))
    make_chatlog(logs / "chat.db", {"s1": [("user", "Is the office open on Sunday?", None),
                                           ("assistant", "No, it opens Monday to Friday.", 1)]})
    assert main(["prepare", "--input", str(logs), "--output-dir", str(tmp_path / "data"),
                 "export.min_conversations=10"]) == 0
    train, validation = tmp_path / "data" / "train.jsonl", tmp_path / "data" / "validation.jsonl"
    config = tiny_config(tiny_model_dir, train, tmp_path / "run", task="chat", max_steps=3,
                         validation_file=str(validation), do_eval=True)
    finetune_model(config)
    meta = json.loads((tmp_path / "run" / "training_metadata.json").read_text())
    assert meta["task"] == "chat" and [h for h in meta["history"] if "loss" in h]
