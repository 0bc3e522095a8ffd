"""A run folder: what `finetune_model` writes to its output_dir, and what every reader of it may assume.

    <run>/merged/                 the merged model (a Hugging Face folder with config.json), unless merging was off
    <run>/adapter/                the LoRA adapter; adapter_config.json names the base model it was trained on
    <run>/training_metadata.json  the run's task, metrics, loss history and settings (written last)

The trainer writes this layout (finetune/train.py, finetune/metadata.py); the evaluator, the quantizer and the chat
server read it through this module only, so that they all find the same weights in the same order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MERGED_DIR = "merged"
ADAPTER_DIR = "adapter"
ADAPTER_CONFIG_FILE = "adapter_config.json"
TRAINING_METADATA_FILE = "training_metadata.json"


def is_run_folder(path: Path) -> bool:
    """True when `path` holds a run's merged model or its adapter."""
    return (path / MERGED_DIR / "config.json").is_file() or (path / ADAPTER_DIR / ADAPTER_CONFIG_FILE).is_file()


@dataclass(frozen=True)
class RunWeights:
    """Where a run's weights are: its merged model, else its adapter on top of the base model it names."""

    merged: Path | None  # <run>/merged, preferred: it loads with plain transformers
    adapter: Path | None  # <run>/adapter, when there is no merged model

    def base_model(self) -> str | None:
        """The adapter's base model as adapter_config.json names it (a folder, hub id or embedded name), or None."""
        if self.adapter is None:
            return None
        return json.loads((self.adapter / ADAPTER_CONFIG_FILE).read_text()).get("base_model_name_or_path")


def run_weights(path: Path) -> RunWeights | None:
    """The weights of run folder `path`: merged/ first, else adapter/. None for any other folder, including a model
    folder of its own (config.json) that happens to hold an adapter/ too: that folder is the model."""
    merged = path / MERGED_DIR
    if (merged / "config.json").is_file():
        return RunWeights(merged, None)
    adapter = path / ADAPTER_DIR
    if (adapter / ADAPTER_CONFIG_FILE).is_file() and not (path / "config.json").is_file():
        return RunWeights(None, adapter)
    return None


def run_folder_of(path: Path) -> Path | None:
    """The run folder whose merged/ or adapter/ `path` is, going by the folder's name; None for any other folder."""
    return path.parent if path.name in (MERGED_DIR, ADAPTER_DIR) else None


def run_name(path: Path) -> str:
    """What to call the model in `path`: the run's name for a run's merged/ or adapter/, else the folder's name."""
    return (run_folder_of(path) or path).name


def training_metadata_file(folder: Path) -> Path | None:
    """`folder`'s training_metadata.json when it has one (a finished run folder), else None."""
    file = folder / TRAINING_METADATA_FILE
    return file if file.is_file() else None


def read_training_metadata(folder: Path) -> dict:
    """`folder`'s training metadata; {} when it has none or it cannot be read (a listing must not fail on one run)."""
    try:
        return json.loads((folder / TRAINING_METADATA_FILE).read_text())
    except (OSError, ValueError):
        return {}
