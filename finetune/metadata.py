"""The run's identity (so a different run never resumes from another's checkpoints) and its metadata file."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from finetune.hardware import detect_hardware
from finetune.run_folder import TRAINING_METADATA_FILE

RUN_FILE = "run_config.json"
_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes")


def _jsonable(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def config_dict(config) -> dict:
    return {
        "model_args": _jsonable(config.model_args),
        "data_args": _jsonable(config.data_args),
        "training_args": json.loads(config.training_args.to_json_string()),
        "finetune_args": _jsonable(config.finetune_args),
    }


def run_fingerprint(config, model_path: str, data_hash: str) -> str:
    """What makes two runs the same run: model, data and every setting that changes the weights' path."""
    ta = config.training_args
    identity = {
        "model": model_path,
        "data_hash": data_hash,
        "data_args": _jsonable(config.data_args),
        "finetune_args": {k: v for k, v in _jsonable(config.finetune_args).items() if k != "overwrite_output_dir"},
        "training": [ta.learning_rate, ta.num_train_epochs, ta.max_steps, ta.per_device_train_batch_size,
                     ta.gradient_accumulation_steps, ta.seed, str(ta.lr_scheduler_type), ta.warmup_steps],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def check_output_dir(output_dir: Path, fingerprint: str, overwrite: bool) -> bool:
    """Claim output_dir for this run. Return True when it already holds this same run (so it may resume).

    Refuse a folder that holds a different run, or other files, unless `overwrite`: resuming someone else's
    checkpoints, or mixing two runs' files, would silently produce a model nobody asked for.
    """
    run_file = output_dir / RUN_FILE
    same_run = False
    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 changes the folder
    if output_dir.is_dir() and any(output_dir.iterdir()):
        try:
            previous = json.loads(run_file.read_text()).get("fingerprint") if run_file.is_file() else None
        except ValueError:
            previous = None
        same_run = previous == fingerprint
        if not same_run and not overwrite and is_main:
            what = "a different fine-tuning run" if previous else "files that are not from a fine-tuning run"
            raise FileExistsError(
                f"output_dir {output_dir} already holds {what}. Choose another output_dir, or set "
                f"overwrite_output_dir=True (--overwrite_output_dir) to replace it."
            )
        if overwrite and not same_run and is_main:
            for child in output_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "created": time.time()}, indent=2))
        tmp.replace(run_file)
    return same_run


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_metadata(output_dir: Path, config, fingerprint: str, metrics: dict, history: list, counts: dict,
                   device: str, precision: str, threads: int | None, model_path: str) -> Path:
    metadata = {
        "base_model": model_path,
        "task": config.finetune_args.task,
        "method": "full" if config.finetune_args.full_finetune else ("qlora" if config.finetune_args.qlora else "lora"),
        "fingerprint": fingerprint,
        "data_hash": counts.get("sha256"),
        "data": counts,
        "metrics": metrics,
        "history": history,
        "device": device,
        "precision": precision,
        "threads": threads,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "hardware": detect_hardware().as_dict(),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "config": config_dict(config),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = output_dir / TRAINING_METADATA_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(metadata, indent=2, default=str))
    tmp.replace(path)
    return path
