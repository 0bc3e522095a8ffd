"""Config dataclasses: NeuralChat's defaults, and errors that name the field.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/neural_chat_app/test_config.py
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from neural_chat_app import (
    GenerationConfig,
    LoadingModelConfig,
    MixedPrecisionConfig,
    PipelineConfig,
    WeightOnlyQuantConfig,
    build_chatbot,
)


def test_generation_defaults_follow_neuralchat():
    cfg = GenerationConfig()
    assert (cfg.temperature, cfg.top_k, cfg.top_p) == (0.1, 40, 0.75)
    assert (cfg.repetition_penalty, cfg.max_new_tokens, cfg.return_stats) == (1.1, 256, False)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": "ten"}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"task": "translate"}, "task"),
        ({"stop": [""]}, "stop"),
        ({"num_return_sequences": 2}, "num_return_sequences"),
    ],
)
def test_generation_config_errors_name_the_field(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=field):
        GenerationConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"backend": "onnx"}, "backend"),
        ({"device": "tpu"}, "device"),
        ({"task": "qa"}, "task"),
        ({"optimization_config": "bf16"}, "optimization_config"),
        ({"loading_config": {"peft_path": "x"}}, "loading_config"),
    ],
)
def test_pipeline_config_errors_name_the_field(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=field):
        PipelineConfig(**kwargs)


def test_pipeline_defaults_to_mixed_precision_and_embedded_model():
    cfg = PipelineConfig()
    assert isinstance(cfg.optimization_config, MixedPrecisionConfig)
    assert cfg.model_name_or_path is None and cfg.backend == "auto"
    assert isinstance(cfg.loading_config, LoadingModelConfig)


def test_enabled_plugin_is_refused_with_its_name():
    # retrieval and safety_checker exist (tests/neural_chat_app/test_plugins.py); NeuralChat's others do not
    with pytest.raises(NotImplementedError, match="tts"):
        PipelineConfig(plugins={"tts": {"enable": True}})


def test_weight_only_quant_validates_and_checks_the_group_size_against_the_model():
    with pytest.raises(ValueError, match="weight_dtype"):
        WeightOnlyQuantConfig(weight_dtype="int3")
    assert WeightOnlyQuantConfig(weight_dtype="int4_fullrange").weight_dtype == "int4"
    # NeuralChat's default group size 128 does not divide the embedded model's width 576: refused, not adapted.
    with pytest.raises(ValueError, match="group_size=128 does not divide"):
        build_chatbot(PipelineConfig(optimization_config=WeightOnlyQuantConfig()))


def test_build_chatbot_rejects_wrong_argument_and_unknown_model(tmp_path):
    with pytest.raises(TypeError, match="PipelineConfig"):
        build_chatbot({"model_name_or_path": "x"})
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        build_chatbot(PipelineConfig(model_name_or_path=str(tmp_path / "no-such-model")))


def test_bitsandbytes_config_is_reexported():
    from transformers import BitsAndBytesConfig

    import neural_chat_app

    assert neural_chat_app.BitsAndBytesConfig is BitsAndBytesConfig


def test_import_stays_light():
    code = (
        "import sys, neural_chat_app; "
        "print([m for m in ('openvino', 'openvino_genai', 'fastapi', 'neural_compressor') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_serve_script_takes_the_serve_options_directly():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "neuralchat-serve"
    assert script.is_file(), "scripts/setup.sh installs the project with its console scripts"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--config" in proc.stdout and "--no-log" in proc.stdout  # serve's own options, no `serve` to repeat
