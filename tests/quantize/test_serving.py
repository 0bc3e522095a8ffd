"""neural_chat_app serves quantize artifacts through WeightOnlyQuantConfig (OpenVINO IR and Neural Compressor).

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/quantize/test_serving.py
"""

from __future__ import annotations

import pytest

from neural_chat_app import GenerationConfig, PipelineConfig, WeightOnlyQuantConfig, build_chatbot

GREEDY = GenerationConfig(do_sample=False, max_new_tokens=4)


def _bot(path, backend="auto", **quant):
    return build_chatbot(PipelineConfig(model_name_or_path=str(path), backend=backend,
                                        optimization_config=WeightOnlyQuantConfig(**quant)))


def test_openvino_int4_and_int8_artifacts_are_served_by_openvino_genai(artifact):
    pytest.importorskip("openvino_genai")
    for bits, fields in ((4, {"group_size": 32}), (8, {})):
        path = artifact(backend="openvino", bits=bits, **fields)
        bot = _bot(path, weight_dtype=f"int{bits}")
        try:
            assert bot.backend.kind == "openvino"
            assert isinstance(bot.predict("hello", GREEDY), str)
        finally:
            bot.close()


def test_inc_artifact_is_served_by_the_torch_backend(artifact):
    pytest.importorskip("neural_compressor")
    path = artifact(backend="inc", bits=4, group_size=32)
    bot = _bot(path, weight_dtype="int4")  # backend "auto" picks torch for a Neural Compressor artifact
    try:
        assert bot.backend.kind == "torch"
        assert type(bot.backend.model.model.layers[0].self_attn.q_proj).__name__ != "Linear"
        assert isinstance(bot.predict("hello", GREEDY), str)
    finally:
        bot.close()
    with pytest.raises(ValueError, match="use backend='torch'"):
        _bot(path, backend="openvino", weight_dtype="int4")


def test_weight_dtype_must_match_the_artifact(artifact):
    pytest.importorskip("neural_compressor")
    path = artifact(backend="inc", bits=4, group_size=32)
    with pytest.raises(ValueError, match="holds 4-bit weights .*weight_dtype='int8'"):
        _bot(path, weight_dtype="int8")


def test_plain_model_is_quantized_once_into_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("neural_compressor")
    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path))
    bot = _bot(tiny_model_dir, backend="torch", weight_dtype="int8", group_size=32, scheme="sym")
    bot.close()
    made = list((tmp_path / "quantized").iterdir())
    assert [p.name for p in made] == [f"{tiny_model_dir.name}-int8-rtn-g32-sym-inc"]
    stamp = (made[0] / "quantization.json").stat().st_mtime_ns
    _bot(tiny_model_dir, backend="torch", weight_dtype="int8", group_size=32, scheme="sym").close()
    assert (made[0] / "quantization.json").stat().st_mtime_ns == stamp  # reused, not redone
    with pytest.raises(ValueError, match="calibrates on data: run quantize_model"):
        _bot(tiny_model_dir, backend="torch", weight_dtype="int4", group_size=32, algorithm="GPTQ")
    with pytest.raises(ValueError, match=r"WeightOnlyQuantConfig\(weight_dtype='int8', scheme='asym'\) served with "
                                         r"backend 'torch' quantizes through inc: .*packs asymmetric 8-bit weights"):
        _bot(tiny_model_dir, backend="torch", weight_dtype="int8", group_size=32, scheme="asym")


def test_registry_lists_quantized_artifacts(artifact, artifacts_dir):
    from neural_chat_app.registry import list_models

    path = artifact(backend="inc", bits=4, group_size=32)
    entries = {e.id: e for e in list_models([artifacts_dir])}
    entry = entries[path.name]
    assert (entry.kind, entry.backend) == ("quantized", "torch")
    assert entry.metadata["tag"] == "int4-rtn-g32-asym"
