"""Chatbot plugins in NeuralChat's shape: retrieval (answer from local documents) and a safety checker.

Switch them on before `build_chatbot`, as NeuralChat users do::

    from neural_chat_app import PipelineConfig, build_chatbot, plugins
    plugins.retrieval.enable = True
    plugins.retrieval.args = {"input_path": "docs/"}
    chatbot = build_chatbot(PipelineConfig())        # or PipelineConfig(plugins=plugins)
    chunks, links = chatbot.predict_stream("How many cores does the Zorblax 9000 have?")

or per pipeline: `PipelineConfig(plugins={"retrieval": {"enable": True, "args": {...}}})`. The arguments are the
fields of `RetrievalArgs` and `SafetyCheckerArgs` (plugins/settings.py). This module stays light: the embedding
model and the vector store load only when a chatbot with retrieval is built.
"""

from __future__ import annotations

from collections.abc import Mapping

from neural_chat_app.plugins.settings import PLUGIN_ARGS, RetrievalArgs, SafetyCheckerArgs

# NeuralChat's other plugins: named in the error when enabled, so a notebook fails with a clear message.
NOT_PROVIDED = ("tts", "tts_chinese", "asr", "asr_chinese", "face_animation", "image2image", "ner", "ner_int", "cache")

__all__ = [
    "PluginSettings",
    "Plugins",
    "RetrievalArgs",
    "SafetyCheckerArgs",
    "check_plugins",
    "plugins",
    "resolve_plugins",
]


class _AttrDict(dict):
    """A dict whose keys also read and write as attributes (`plugins.retrieval.enable = True`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no {name!r}; keys: {sorted(self)}") from None

    def __setattr__(self, name, value):
        self[name] = value


class PluginSettings(_AttrDict):
    """One plugin's switch and arguments: `enable` (bool) and `args` (dict)."""

    def __init__(self, enable: bool = False, args: Mapping | None = None):
        super().__init__(enable=enable, args=dict(args or {}))


class Plugins(_AttrDict):
    """The registry: one PluginSettings per plugin this project provides."""

    def __init__(self):
        super().__init__()
        self.reset()

    def reset(self) -> None:
        """Every plugin off, with no arguments."""
        self.clear()
        for name in PLUGIN_ARGS:
            self[name] = PluginSettings()


plugins = Plugins()


def _entries(source: Mapping, where: str) -> dict[str, dict]:
    out = {}
    for name, value in source.items():
        if not isinstance(value, Mapping):
            raise TypeError(f"{where}[{name!r}] must be a dict with 'enable' and 'args', got {value!r}")
        unknown = set(value) - {"enable", "args", "class", "instance"}  # NeuralChat kept class/instance there too
        if unknown:
            raise ValueError(f"{where}[{name!r}] has unknown key(s) {sorted(unknown)}; use 'enable' and 'args'")
        out[name] = {"enable": bool(value.get("enable", False)), "args": dict(value.get("args") or {})}
    return out


def check_plugins(source: Mapping, where: str = "PipelineConfig.plugins") -> dict[str, object]:
    """Validate plugin settings; return {name: parsed args} of the enabled ones. Raises naming the bad field."""
    enabled = {}
    for name, entry in _entries(source, where).items():
        if not entry["enable"]:
            continue
        if name in NOT_PROVIDED:
            raise NotImplementedError(
                f"{where} enables {name!r}: this project provides the plugins {sorted(PLUGIN_ARGS)} only"
            )
        if name not in PLUGIN_ARGS:
            raise ValueError(f"{where} enables unknown plugin {name!r}; known: {sorted(PLUGIN_ARGS)}")
        enabled[name] = PLUGIN_ARGS[name].from_dict(entry["args"], f"{where}[{name!r}].args")
    return enabled


def resolve_plugins(config_plugins: Mapping | None, use_global: bool = True) -> dict[str, object]:
    """The plugins a chatbot gets: the global `plugins` registry, overridden per name by the config's entries."""
    merged: dict[str, Mapping] = dict(plugins) if use_global else {}
    merged.update(config_plugins or {})
    return check_plugins(merged)


def build_plugin_pipeline(enabled: Mapping[str, object]):
    """A PluginPipeline for the enabled plugins (loads the embedding model and indexes documents), or None."""
    if not enabled:
        return None
    from neural_chat_app.plugins.pipeline import PluginPipeline

    return PluginPipeline.build(enabled)
