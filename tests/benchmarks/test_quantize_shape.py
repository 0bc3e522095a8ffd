"""`python -m benchmarks quantize --shape NAME`: a real shape's random weights quantized as a user quantizes a model,
with each phase's peak memory beside the estimate, or a row that says why the run was not started."""

from __future__ import annotations

import pytest

from benchmarks import quantize_shape, shapes
from finetune.memory import MEMORY_ENV
from tests.benchmarks.test_shapes import _tiny_shape


@pytest.fixture
def tiny_shape(tmp_path, monkeypatch):
    folder = _tiny_shape(tmp_path / "shape")
    monkeypatch.setattr(shapes, "shape_folder", lambda name: folder)
    return folder


def test_a_shape_is_written_once_in_bf16_and_quantized_with_its_memory_measured(tiny_shape, tmp_path):
    pytest.importorskip("optimum.intel")
    from safetensors import safe_open

    from finetune.models import load_model

    payload = quantize_shape.run_shape("tiny", ["ov-int8"], tmp_path / "out")
    written = tiny_shape / "random-weights"
    assert payload["source"] == str(written) and (written / "tokenizer.json").is_file()
    with safe_open(str(written / "model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype.is_floating_point
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}  # as real checkpoints are
    row = payload["rows"][1]
    assert row["run"] == "ov-int8" and row["decode_tok_s"] > 0
    # INT8 stores a byte for every weight of every matrix: none is shared, as OpenVINO shares equal constants
    linear = sum(p.numel() for n, p in load_model(str(written)).named_parameters() if p.ndim == 2)
    assert row["weight_bytes"] >= linear
    assert set(row["peak_gib"]) >= {"export", "reference", "artifact"} and row["reference_dtype"] == "fp32"
    assert set(row["estimate_gib"]) == {"export", "reference", "artifact"}
    table = quantize_shape.render_shape(payload)
    assert "| ov-int8 |" in table and "(fp32)" in table


def test_a_run_that_cannot_fit_gets_a_row_that_says_so(tiny_shape, tmp_path, monkeypatch):
    monkeypatch.setenv(MEMORY_ENV, "0.5")
    payload = quantize_shape.run_shape("tiny", ["ov-int8"], tmp_path / "out")
    row = payload["rows"][1]
    assert "stopped before loading the model" in row["not_started"] and "0.5 GiB is available" in row["not_started"]
    assert "| ov-int8 | not started: estimated " in quantize_shape.render_shape(payload)
    assert row["would_fit"] == []  # not even the cheapest change fits in half a GiB
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_unknown_runs_are_named(tiny_shape, tmp_path):
    with pytest.raises(SystemExit, match="ov-int4-rtn"):
        quantize_shape.run_shape("tiny", ["ov-int3"], tmp_path)


@pytest.mark.integration
def test_a_gguf_named_as_a_model_is_converted_tuned_and_merged_with_each_peak(tiny_real_vocab_dir, tmp_path,
                                                                             monkeypatch):
    from quantize import quantize_model

    artifact = quantize_model(model=str(tiny_real_vocab_dir), backend="gguf", scheme="q8_0",
                              output_dir=str(tmp_path / "q"), evaluate=False)
    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path / "home"))  # the conversion lands here, not in the cache
    rows = quantize_shape.gguf_as_model_rows(artifact / "model-q8_0.gguf")
    converted, tuned, merged = rows
    assert converted["dtype"] == "float32" and converted["weight_bytes"] > converted["gguf_bytes"]
    assert (tmp_path / "home" / "gguf").is_dir()
    assert all(row["peak_gib"] > 0.1 and row["seconds"] > 0 for row in rows)
    assert tuned["tokens_per_s"] > 0 and merged["dtype"] == "float32" and merged["weight_bytes"] > 0
    table = quantize_shape.render_shape({"shape": "tiny", "rows": rows, "machine": {}})
    assert "| merge the adapter |" in table and "(float32)" in table
