"""Fixtures for quantize tests: small calibration files and a session folder of artifacts of the tiny llama."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def messages_file(tmp_path_factory):
    """A `messages` JSONL like the data pipeline writes."""
    path = tmp_path_factory.mktemp("calib") / "train.jsonl"
    records = [
        {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                      {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]}
        for a in range(6) for b in range(3)
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "notes.txt"
    path.write_text("The quick brown fox jumps over the lazy dog.\n\nIntel Xeon processors run bfloat16.\n\n"
                    "What is the capital of France? The capital of France is Paris.\n")
    return path


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture
def quick():
    """QuantizeConfig fields that keep a tiny-model run to seconds."""
    return {"num_eval_prompts": 2, "eval_new_tokens": 4, "calibration_seq_len": 32, "num_calibration_samples": 4,
            "autoround_iters": 2}


@pytest.fixture
def artifact(tiny_model_dir, artifacts_dir, quick):
    """A factory: the tiny llama's artifact for these QuantizeConfig fields (reused when an earlier test made it)."""
    from pathlib import Path

    from quantize import QuantizeConfig, quantize_model
    from quantize.artifacts import artifact_name

    def make(**fields):
        cfg = QuantizeConfig(**{"model": str(tiny_model_dir), "output_dir": str(artifacts_dir), **quick, **fields})
        path = Path(cfg.output_dir) / artifact_name(Path(cfg.model), cfg.tag, cfg.suffix)
        return path if (path / "quantization.json").is_file() else quantize_model(cfg)

    return make


@pytest.fixture(scope="session")
def web_artifacts(tiny_model_dir, tmp_path_factory):
    """backend='web' artifacts of the tiny llama at 4 bits (what the browser test loads) and 8 bits, made once."""
    from quantize import quantize_model

    out = tmp_path_factory.mktemp("web")
    quick = {"num_eval_prompts": 2, "eval_new_tokens": 6}
    return {bits: quantize_model(model=str(tiny_model_dir), output_dir=str(out), backend="web", bits=bits,
                                 group_size=None if bits == 8 else 32, **quick) for bits in (4, 8)}
