"""QuantizeConfig validation, YAML loading and the shipped configs/quantize*.yaml.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/quantize/test_quantize_config.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from quantize.config import SCHEMES, QuantizeConfig

ROOT = Path(__file__).resolve().parents[2]


def test_unknown_scheme_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"scheme 'int3-magic' is unknown.*'rtn', 'gptq', 'awq', 'autoround'"):
        QuantizeConfig(backend="inc", scheme="int3-magic")
    with pytest.raises(ValueError, match="'f16', 'bf16', 'q8_0', 'q4_0', 'q4_1', 'q4_k_m', 'q5_k_m', 'q6_k'"):
        QuantizeConfig(backend="gguf", scheme="awq")
    with pytest.raises(ValueError, match="QuantizeConfig.backend='tensorrt' is not valid; choose one of: inc, "):
        QuantizeConfig(backend="tensorrt")


@pytest.mark.parametrize("bits", [2, 3, 16, True, "4"])
def test_bits_other_than_4_or_8_are_refused(bits):
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        QuantizeConfig(backend="inc", bits=bits)


def test_calibrated_schemes_need_calibration_data(tmp_path):
    for backend, scheme in [("inc", "gptq"), ("inc", "awq"), ("openvino", "awq_se"),
                            ("openvino", "gptq"), ("openvino", "scale_estimation")]:
        with pytest.raises(ValueError, match="calibration_file is required"):
            QuantizeConfig(backend=backend, scheme=scheme)
    with pytest.raises(FileNotFoundError, match="calibration_file"):
        QuantizeConfig(backend="inc", scheme="gptq", calibration_file=str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("scheme", ["smoothquant", "static", "dynamic"])
def test_ipex_and_pt2e_paths_are_refused_with_the_reason_and_the_alternative(scheme):
    with pytest.raises(NotImplementedError, match=r"refused: .*(IPEX|Intel Extension|DynamicCache).*use weight-only"):
        QuantizeConfig(backend="inc", scheme=scheme, bits=8)


def test_eight_bit_inc_and_web_weights_are_symmetric_and_asymmetric_ones_are_refused():
    assert QuantizeConfig(backend="inc", bits=8).sym is True
    assert QuantizeConfig(backend="web", bits=8).sym is True
    assert QuantizeConfig(backend="inc", bits=4).sym is False
    assert QuantizeConfig(backend="openvino", bits=8).sym is False
    assert QuantizeConfig(backend="openvino", bits=8, sym=True).sym is True
    with pytest.raises(ValueError, match=r"sym=False with backend='inc' and bits=8 is refused: Neural Compressor "
                                         r"3.10 packs asymmetric 8-bit weights wrongly .*backend='openvino'"):
        QuantizeConfig(backend="inc", bits=8, sym=False)
    with pytest.raises(ValueError, match="backend='web' and bits=8 is refused: web INT8 is onnxruntime's dynamic"):
        QuantizeConfig(backend="web", bits=8, sym=False)


def test_backend_specific_rules():
    with pytest.raises(ValueError, match="per channel"):
        QuantizeConfig(backend="openvino", bits=8, group_size=64)
    with pytest.raises(ValueError, match="ratio < 1 and all_layers apply to backend='openvino' with bits=4"):
        QuantizeConfig(backend="inc", ratio=0.8)
    with pytest.raises(ValueError, match="ratio must be in"):
        QuantizeConfig(backend="openvino", ratio=1.5)
    with pytest.raises(ValueError, match="contradicts scheme 'q8_0'"):
        QuantizeConfig(backend="gguf", scheme="q8_0", bits=4)
    with pytest.raises(ValueError, match="fixed blocks of 32"):
        QuantizeConfig(backend="gguf", scheme="q4_0", group_size=64)
    with pytest.raises(ValueError, match="group_size must be -1"):
        QuantizeConfig(backend="inc", group_size=0)
    with pytest.raises(ValueError, match="set sym=True"):
        QuantizeConfig(backend="inc", scheme="autoround", calibration_file=__file__)
    with pytest.raises(ValueError, match="num_eval_prompts"):
        QuantizeConfig(num_eval_prompts=0)


def test_tags_name_the_scheme():
    assert QuantizeConfig(backend="openvino", bits=8).tag == "int8-rtn-pc-asym"
    assert QuantizeConfig(backend="inc", bits=4, group_size=32, sym=True).tag == "int4-rtn-g32-sym"
    cfg = QuantizeConfig(backend="openvino", scheme="awq_se", calibration_file=__file__, ratio=0.8, all_layers=True)
    assert cfg.tag == "int4-awq-se-g64-asym-r80-all" and cfg.suffix == "ov"
    gguf = QuantizeConfig(backend="gguf", scheme="q8_0")
    assert (gguf.tag, gguf.bits, gguf.group_size, gguf.sym) == ("q8_0", 8, 32, True)
    assert QuantizeConfig(backend="gguf", scheme="f16").bits is None


def test_yaml_unknown_key_is_named(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("backend: inc\nshceme: rtn\n")
    with pytest.raises(ValueError, match=r"q.yaml: unknown key 'shceme'; did you mean 'scheme'\? \(allowed: model, "):
        QuantizeConfig.from_yaml(path)
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        QuantizeConfig.from_yaml(path)


def test_yaml_overrides_win(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("backend: inc\nscheme: rtn\nbits: 4\n")
    assert QuantizeConfig.from_yaml(path, {"bits": 8}).bits == 8
    assert QuantizeConfig.from_yaml(path, ["bits=8", "sym=true"]).sym is True


def test_the_command_line_reads_file_then_overrides_then_flags(tmp_path):
    from quantize.__main__ import parse_config

    path = tmp_path / "q.yaml"
    path.write_text("backend: inc\nscheme: rtn\nbits: 4\n")
    cfg = parse_config(["--config", str(path), "bits=8", "--group_size", "32", "--sym", "--model", "runs/x"])
    assert (cfg.bits, cfg.group_size, cfg.sym, cfg.model) == (8, 32, True, "runs/x")
    assert parse_config(["--config", str(path), "--no-evaluate", "--model", "null"]).evaluate is False
    with pytest.raises(ValueError, match="bits must be int or null, got str 'eight'"):
        parse_config(["--config", str(path), "--bits", "eight"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("quantize*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # calibration paths in the configs are relative to the repo root
    cfg = QuantizeConfig.from_yaml(path)
    assert cfg.scheme in SCHEMES[cfg.backend]
    assert "python -m quantize --config" in path.read_text()


def test_every_config_field_is_a_cli_flag_documented_by_its_docstring(capsys):
    from finetune.config_binding import field_docs
    from quantize.__main__ import build_parser

    parser = build_parser()
    assert {f"--{f}" for f in QuantizeConfig.__dataclass_fields__} <= set(parser._option_string_actions)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    docs = field_docs(QuantizeConfig)
    assert set(docs) == set(QuantizeConfig.__dataclass_fields__)
    assert all(doc in text for doc in docs.values())
