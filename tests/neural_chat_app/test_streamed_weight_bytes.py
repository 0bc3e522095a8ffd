"""streamed_weight_bytes: what one decode step of an OpenVINO export reads, the serving benchmark's limit.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/neural_chat_app/test_streamed_weight_bytes.py
"""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from openvino import opset13 as ops  # noqa: E402

from neural_chat_app.openvino_backend import streamed_weight_bytes  # noqa: E402

HIDDEN, ROWS, VOCAB = 32, 24, 100


def _export(tmp_path, tied: bool):
    """An embedding, a plain f32 projection, an NNCF int8 one (u8 weight and zero point, f16 scale) and an int4
    one (packed i4, f16 group scales, a reshape), then an lm_head that is the embedding (tied) or its own."""
    rng = np.random.default_rng(0)
    ids = ops.parameter([-1], ov.Type.i64, name="ids")
    table = ops.constant(rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32))
    x = ops.gather(table, ids, ops.constant(np.array(0, np.int64)))
    plain = ops.constant(rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32))
    u8 = ops.convert(ops.constant(rng.integers(0, 255, (ROWS, HIDDEN)).astype(np.uint8)), ov.Type.f16)
    zero = ops.convert(ops.constant(np.full((ROWS, 1), 128, np.uint8)), ov.Type.f16)
    int8 = ops.convert(ops.multiply(ops.subtract(u8, zero), ops.constant(np.full((ROWS, 1), 0.01, np.float16))),
                       ov.Type.f32)
    i4 = ops.convert(ops.constant(rng.integers(-8, 8, (HIDDEN, ROWS // 8, 8)).astype(np.int8), dtype=ov.Type.i4),
                     ov.Type.f16)
    int4 = ops.convert(ops.reshape(ops.multiply(i4, ops.constant(np.full((HIDDEN, ROWS // 8, 1), 0.1, np.float16))),
                                   ops.constant(np.array([HIDDEN, ROWS], np.int64)), special_zero=False), ov.Type.f32)
    head = table if tied else ops.constant(rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32))
    h = ops.matmul(x, plain, False, True)
    h = ops.matmul(ops.matmul(h, int8, False, True), int4, False, True)
    logits = ops.matmul(h, head, False, True)
    ov.save_model(ov.Model([ops.result(logits)], [ids]), tmp_path / "openvino_model.xml", compress_to_fp16=False)
    return tmp_path


@pytest.mark.parametrize("tied", [True, False])
def test_every_matmul_weight_counts_once_at_its_stored_size(tmp_path, tied):
    folder = _export(tmp_path, tied)
    int8 = ROWS * HIDDEN + ROWS + 2 * ROWS  # u8 weight, u8 zero point, f16 scale per row
    int4 = HIDDEN * ROWS // 2 + 2 * HIDDEN * ROWS // 8  # two weights a byte, an f16 scale per group of 8
    f32 = (HIDDEN * HIDDEN + VOCAB * HIDDEN) * 4  # the plain projection and the lm_head; an untied embedding is
    assert streamed_weight_bytes(folder, bf16_compute=False) == f32 + int8 + int4  # only gathered: one row a step
    # where the CPU plugin computes in bf16 it holds f32 weights in bf16: half the bytes to read
    assert streamed_weight_bytes(folder, bf16_compute=True) == f32 // 2 + int8 + int4
