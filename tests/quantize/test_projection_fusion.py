"""fuse_projections: q/k/v MatMuls become one MatMul + split, with the same outputs, in every weight form we export.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/quantize/test_projection_fusion.py
"""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from openvino import opset13 as ops  # noqa: E402

from quantize.projection_fusion import fuse_projections  # noqa: E402

HIDDEN = 16
ROWS = (16, 8, 8)  # a grouped-query attention layer: k and v narrower than q


def _plain(rng, rows):
    return ops.constant(rng.standard_normal((rows, HIDDEN)).astype(np.float32))


def _int8(rng, rows, dtype=np.uint8):
    """NNCF's asymmetric per-row int8 form: u8 weight and zero point, converted, subtracted, scaled."""
    weight = ops.convert(ops.constant(rng.integers(0, 127, (rows, HIDDEN)).astype(dtype)), ov.Type.f16)
    zero = ops.convert(ops.constant(rng.integers(100, 150, (rows, 1)).astype(np.uint8)), ov.Type.f16)
    scale = ops.constant((rng.random((rows, 1)) / 50).astype(np.float16))
    return ops.convert(ops.multiply(ops.subtract(weight, zero), scale), ov.Type.f32)


def _int4(rng, rows, group=8):
    """NNCF's symmetric group-wise int4 form: packed i4 [rows, groups, group], scaled per group, reshaped."""
    values = rng.integers(-8, 8, (rows, HIDDEN // group, group))
    weight = ops.convert(ops.constant(values.astype(np.int8), dtype=ov.Type.i4), ov.Type.f16)
    scale = ops.constant((rng.random((rows, HIDDEN // group, 1)) / 20).astype(np.float16))
    shape = ops.constant(np.array([rows, HIDDEN], dtype=np.int64))
    return ops.convert(ops.reshape(ops.multiply(weight, scale), shape, special_zero=False), ov.Type.f32)


def _model(weights):
    x = ops.parameter([-1, HIDDEN], ov.Type.f32, name="x")
    outputs = [ops.matmul(x, w, transpose_a=False, transpose_b=True) for w in weights]
    return ov.Model([ops.result(o) for o in outputs], [x])


def _run(model, x):
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled({"x": x})
    return [result[out] for out in compiled.outputs]


def _matmuls(model) -> int:
    return sum(op.get_type_name() == "MatMul" for op in model.get_ordered_ops())


@pytest.mark.parametrize("form", [_plain, _int8, _int4])
def test_fused_projections_compute_the_same_rows(form):
    x = np.random.default_rng(1).standard_normal((5, HIDDEN)).astype(np.float32)
    rng = np.random.default_rng(0)
    before = _run(_model([form(rng, rows) for rows in ROWS]), x)
    rng = np.random.default_rng(0)
    model = _model([form(rng, rows) for rows in ROWS])
    assert fuse_projections(model) == 1
    assert _matmuls(model) == 1
    after = _run(model, x)
    for old, new, rows in zip(before, after, ROWS):
        assert new.shape == (5, rows)
        np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-5)


def test_weights_of_different_forms_are_left_alone():
    rng = np.random.default_rng(1)
    model = _model([_plain(rng, ROWS[0]), _int8(rng, ROWS[1]), _plain(rng, ROWS[2])])
    assert fuse_projections(model) == 0
    assert _matmuls(model) == 3


def test_weights_of_different_element_types_are_left_alone():
    """u8 and i8 rows have the same bytes per row: concatenated, the i8 rows would be read as u8."""
    rng = np.random.default_rng(1)
    model = _model([_int8(rng, ROWS[0]), _int8(rng, ROWS[1], np.int8), _int8(rng, ROWS[2])])
    assert fuse_projections(model) == 0


def test_a_gate_up_pair_is_left_to_the_plugin_mlp_fusion():
    rng = np.random.default_rng(2)
    model = _model([_plain(rng, 32), _plain(rng, 32)])
    assert fuse_projections(model) == 0


def test_odd_packed_rows_are_left_alone():
    """An int4 row of 3 values ends mid-byte: concatenating packed bytes would shift every later row."""
    x = ops.parameter([-1, 3], ov.Type.f32, name="x")
    weights = [ops.convert(ops.constant(np.ones((1, 3), np.int8), dtype=ov.Type.i4), ov.Type.f32) for _ in range(3)]
    model = ov.Model([ops.result(ops.matmul(x, w, False, True)) for w in weights], [x])
    assert fuse_projections(model) == 0


@pytest.mark.integration
@pytest.mark.parametrize("weight_format", ["fp32", "int4"])
def test_exported_model_logits_unchanged_by_fusion(weight_format, tiny_model_dir, tmp_path, monkeypatch):
    """The real exporter's graphs (optimum-intel, NNCF): every attention layer fuses, the logits stay the same."""
    pytest.importorskip("optimum.intel")
    import json

    import quantize.openvino as ov_export

    folder = ov_export.export_openvino(tiny_model_dir, tmp_path / "fused", weight_format)
    assert json.loads((folder / "openvino_export.json").read_text())["fused_projection_groups"] == 2  # 2 layers
    import quantize.projection_fusion

    monkeypatch.setattr(quantize.projection_fusion, "fuse_projections_in_folder", lambda folder: 0)
    plain = ov_export.export_openvino(tiny_model_dir, tmp_path / "plain", weight_format)
    monkeypatch.undo()

    core = ov.Core()
    unfused, fused = core.read_model(plain / "openvino_model.xml"), core.read_model(folder / "openvino_model.xml")
    assert _matmuls(unfused) - _matmuls(fused) == 2 * 2  # three MatMuls became one, in each layer
    ids = np.random.default_rng(3).integers(3, 60, (1, 12))
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(12)[None],
              "beam_idx": np.zeros(1, np.int32)}
    logits = []
    for model in (unfused, fused):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        logits.append(compiled.create_infer_request().infer(inputs)["logits"])
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-4, atol=1e-4)

    # An export made before fusion existed: the command rewrites the folder in place, to the same logits.
    from quantize.projection_fusion import is_fused, main

    assert is_fused(folder) and not is_fused(plain)
    assert main([str(tmp_path)]) == 1  # not an export folder: an error naming it, nothing written

    # Killed between renaming the new .bin and the new .xml into place: the next run restores and starts over.
    from pathlib import Path

    real_replace = Path.replace

    def killed_at_xml(self, target):
        if Path(target).name == "openvino_model.xml":
            raise KeyboardInterrupt
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", killed_at_xml)
    with pytest.raises(KeyboardInterrupt):
        main([str(plain)])
    monkeypatch.undo()
    assert main([str(plain)]) == 0
    assert is_fused(plain) and not list(plain.glob("openvino_model.*fused.*"))
    rewritten = core.compile_model(plain / "openvino_model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(rewritten.create_infer_request().infer(inputs)["logits"], logits[0], rtol=1e-4,
                               atol=1e-4)
