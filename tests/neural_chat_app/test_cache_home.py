"""NEURALCHAT_HOME moves every default cache and log: the chat log and the retrieval index land under it too."""

from __future__ import annotations

from pathlib import Path

from finetune.home import cache_home
from neural_chat_app.plugins.retrieval import default_persist_directory
from neural_chat_app.server.settings import ChatLogSettings, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_chat_log_and_retrieval_index_default_under_neuralchat_home(monkeypatch, tmp_path):
    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path / "home"))
    assert cache_home() == tmp_path / "home"
    assert Path(ChatLogSettings().path) == tmp_path / "home" / "chatlog.sqlite"
    for config in ("server.yaml", "server-openvino.yaml"):  # the shipped configs leave the path to the default
        assert Path(load_settings(REPO / "configs" / config).chat_log.path) == tmp_path / "home" / "chatlog.sqlite"
    index = default_persist_directory([str(tmp_path / "docs")])
    assert index.parent == tmp_path / "home" / "retrieval"
    assert index == default_persist_directory([str(tmp_path / "docs")])  # the same input paths, the same index
    assert index != default_persist_directory([str(tmp_path / "other")])


def test_without_neuralchat_home_the_defaults_are_under_the_user_cache(monkeypatch):
    monkeypatch.delenv("NEURALCHAT_HOME", raising=False)
    home = Path.home() / ".cache" / "neuralchat-xeon"
    assert Path(ChatLogSettings().path) == home / "chatlog.sqlite"
    assert default_persist_directory(["docs"]).parent == home / "retrieval"
