"""`python -m quantize --config FILE.yaml` and `python -m quantize compare DIR` on the tiny llama.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/quantize/test_cli_and_compare.py
"""

from __future__ import annotations

import json

import pytest

from quantize.__main__ import main


def test_cli_runs_a_yaml_config_with_flag_overrides(tiny_real_vocab_dir, tmp_path, capsys):
    config = tmp_path / "q.yaml"
    config.write_text(f"model: {tiny_real_vocab_dir}\noutput_dir: {tmp_path / 'out'}\nbackend: gguf\nscheme: f16\n"
                      "num_eval_prompts: 2\neval_new_tokens: 4\n")
    assert main(["--config", str(config), "--scheme", "q8_0"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "out" / f"{tiny_real_vocab_dir.name}-q8_0-gguf"
    assert str(folder) in out and "greedy agreement" in out
    assert json.loads((folder / "quantization.json").read_text())["config"]["scheme"] == "q8_0"


def test_cli_errors_name_the_problem(tmp_path, capsys):
    config = tmp_path / "q.yaml"
    config.write_text("backend: inc\nbitz: 4\n")
    assert main(["--config", str(config)]) == 2
    assert "unknown key 'bitz'; did you mean 'bits'?" in capsys.readouterr().err
    assert main(["--backend", "inc", "--scheme", "fp3"]) == 2
    assert "valid schemes are ('rtn', 'gptq', 'awq', 'autoround')" in capsys.readouterr().err
    assert main(["--backend", "inc", "--bits", "3"]) == 2
    assert "bits must be 4 or 8" in capsys.readouterr().err


def test_compare_prints_one_table_and_writes_a_plot(tiny_real_vocab_dir, tmp_path, capsys):
    from quantize import quantize_model

    out = tmp_path / "arts"
    for scheme in ("f16", "q8_0", "q4_0"):
        quantize_model(model=str(tiny_real_vocab_dir), output_dir=str(out), backend="gguf", scheme=scheme,
                       num_eval_prompts=2, eval_new_tokens=4)
    (out / "not-an-artifact").mkdir()
    assert main(["compare", str(out), "--json", str(tmp_path / "rows.json")]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if "|" in line]
    assert lines[0].split("|")[0].strip() == "artifact"
    assert "weights MB" in lines[0] and "ppl delta %" in lines[0] and "decode tok/s" in lines[0]
    names = [line.split("|")[0].strip() for line in lines[1:]]
    assert names[0].endswith("(source, fp32)")
    assert names[1:] == [f"{tiny_real_vocab_dir.name}-{s}-gguf" for s in ("q4_0", "q8_0", "f16")]  # smallest first
    png = out / "comparison.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = next(iter(json.loads((tmp_path / "rows.json").read_text()).values()))
    assert rows[1]["weights_mb"] < rows[2]["weights_mb"] < rows[3]["weights_mb"]


def test_compare_without_artifacts_says_so(tmp_path):
    from quantize import compare_artifacts

    with pytest.raises(FileNotFoundError, match="no artifacts"):
        compare_artifacts(tmp_path)
