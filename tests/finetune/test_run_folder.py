"""Run folders (finetune_model's output): where their weights are, what they are called, their training metadata,
and that every reader (evaluate, quantize, the chat server, its registry) finds the same weights in the same order.

The folders are stubs (a config.json, an adapter_config.json): nothing here loads a model.
Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/finetune/test_run_folder.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.run_folder import (
    RunWeights,
    is_run_folder,
    read_training_metadata,
    run_folder_of,
    run_name,
    run_weights,
    training_metadata_file,
)


def _hf_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return path


def _adapter(run: Path, base: str | None) -> Path:
    adapter = run / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base} if base else {}))
    return adapter


@pytest.fixture
def base(tmp_path) -> Path:
    return _hf_folder(tmp_path / "base-model")


@pytest.fixture
def merged_run(tmp_path, base) -> Path:
    """merged/ and adapter/ side by side, as a LoRA run with merging on writes them, plus its metadata."""
    run = tmp_path / "merged-run"
    _hf_folder(run / "merged")
    _adapter(run, str(base))
    (run / "training_metadata.json").write_text(json.dumps({"task": "extraction"}))
    return run


@pytest.fixture
def adapter_run(tmp_path, base) -> Path:
    run = tmp_path / "adapter-run"
    _adapter(run, str(base))
    return run


def test_a_merged_model_is_preferred_to_the_adapter(merged_run):
    assert is_run_folder(merged_run)
    assert run_weights(merged_run) == RunWeights(merged_run / "merged", None)


def test_an_adapter_only_run_names_its_base_model(adapter_run, base):
    weights = run_weights(adapter_run)
    assert is_run_folder(adapter_run)
    assert weights == RunWeights(None, adapter_run / "adapter") and weights.base_model() == str(base)


def test_an_adapter_without_a_base_model_says_none(tmp_path):
    run = tmp_path / "no-base"
    _adapter(run, None)
    assert run_weights(run).base_model() is None


def test_a_model_folder_is_not_a_run_even_with_an_adapter_inside(tmp_path, base):
    assert run_weights(base) is None and not is_run_folder(base)
    _adapter(base, "elsewhere")
    assert run_weights(base) is None  # the folder's own config.json wins: it is the model
    assert is_run_folder(base)  # the registry still lists it as fine-tuned, as before
    assert run_weights(tmp_path / "missing") is None


def test_names_and_training_metadata(merged_run, base, tmp_path):
    assert run_folder_of(merged_run / "merged") == merged_run and run_folder_of(base) is None
    assert run_name(merged_run / "merged") == run_name(merged_run / "adapter") == run_name(merged_run) == "merged-run"
    assert training_metadata_file(merged_run) == merged_run / "training_metadata.json"
    assert training_metadata_file(merged_run / "merged") is None
    assert read_training_metadata(merged_run) == {"task": "extraction"}
    assert read_training_metadata(base) == {}
    (base / "training_metadata.json").write_text("{not json")  # a run killed while writing: listed, not fatal
    assert read_training_metadata(base) == {}


def test_every_reader_finds_the_merged_model(merged_run):
    from finetune.evaluate.generation import resolve_model
    from finetune.models import resolve_model_path
    from neural_chat_app import PipelineConfig
    from neural_chat_app.loading import model_id_for, resolve_source
    from quantize.artifacts import artifact_name
    from quantize.artifacts import resolve_source as quantize_source

    merged = merged_run / "merged"
    assert resolve_model_path(str(merged_run)) == str(merged)
    spec = resolve_model(str(merged_run))
    assert (spec.path, spec.adapter, spec.task) == (str(merged), None, "extraction")
    assert resolve_model(str(merged)).task == "extraction"  # the run's metadata, found from its merged/
    source = resolve_source(PipelineConfig(str(merged_run)))
    assert (source.path, source.peft_path, source.model_id) == (merged, None, "merged-run")
    assert model_id_for(str(merged)) == "merged-run"
    assert quantize_source(str(merged_run)) == merged.resolve()
    assert artifact_name(merged, "int8", "inc") == "merged-run-int8-inc"


def test_every_reader_rebuilds_an_adapter_only_run_from_its_base(adapter_run, base):
    from finetune.evaluate.generation import resolve_model
    from neural_chat_app import PipelineConfig
    from neural_chat_app.loading import resolve_source
    from quantize.artifacts import resolve_source as quantize_source

    spec = resolve_model(str(adapter_run))
    assert (spec.path, spec.adapter, spec.task) == (str(base), str(adapter_run / "adapter"), None)
    source = resolve_source(PipelineConfig(str(adapter_run)))
    assert (source.path, source.peft_path, source.model_id) == (base, adapter_run / "adapter", "adapter-run")
    with pytest.raises(ValueError, match="LoRA adapter but no merged/ model"):
        quantize_source(str(adapter_run))


def test_an_adapter_without_a_base_model_is_refused_with_each_readers_error(tmp_path):
    from finetune.evaluate import EvalError
    from finetune.evaluate.generation import resolve_model
    from neural_chat_app import PipelineConfig
    from neural_chat_app.loading import resolve_source

    run = tmp_path / "no-base"
    _adapter(run, None)
    with pytest.raises(EvalError, match="names no base_model_name_or_path, so the model cannot be rebuilt"):
        resolve_model(str(run))
    with pytest.raises(FileNotFoundError, match="names no base_model_name_or_path: pass model_name_or_path"):
        resolve_source(PipelineConfig(str(run)))


def test_quantize_records_the_runs_metadata_only_for_a_merged_source(merged_run, base):
    from quantize.api import _run_training_metadata

    assert _run_training_metadata(merged_run / "merged") == merged_run / "training_metadata.json"
    assert _run_training_metadata(base) is None


def test_the_registry_lists_runs_by_their_name(tmp_path, merged_run, adapter_run, base):
    from neural_chat_app.registry import describe_folder, list_models

    artifact = _hf_folder(tmp_path / "models" / "tiny-int8-inc")
    (artifact / "quantization.json").write_text(json.dumps({"backend": "inc", "tag": "int8", "bits": 8}))
    assert describe_folder(merged_run).kind == "finetuned"
    assert describe_folder(merged_run).metadata == {"task": "extraction"}
    assert describe_folder(adapter_run).kind == "finetuned" and describe_folder(adapter_run).metadata == {}
    assert describe_folder(base).kind == "huggingface"
    assert describe_folder(artifact).kind == "quantized" and describe_folder(artifact).metadata["bits"] == 8
    entries = {e.id: e for e in list_models([tmp_path / "models"], extra=[str(merged_run / "merged")])}
    assert entries["merged-run"].path == str(merged_run / "merged") and entries["merged-run"].kind == "huggingface"
    assert entries["tiny-int8-inc"].kind == "quantized"


def test_a_quantized_artifact_is_not_quantized_again(tmp_path):
    from quantize.artifacts import resolve_source as quantize_source

    artifact = _hf_folder(tmp_path / "tiny-int8-inc")
    (artifact / "quantization.json").write_text(json.dumps({"backend": "inc", "tag": "int8"}))
    with pytest.raises(ValueError, match="already quantized: it is a inc int8 artifact"):
        quantize_source(str(artifact))
