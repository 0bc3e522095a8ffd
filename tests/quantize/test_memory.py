"""quantize.memory: the estimate from config.json, the stop before loading, the reference's precision, and the
peaks each phase records."""

from __future__ import annotations

import pytest

from finetune.memory import MEMORY_ENV, InsufficientMemoryError
from quantize import QuantizeConfig, quantize_model, read_metadata
from quantize.memory import child_peak, estimate_quantize_memory, phase_peak


@pytest.fixture(scope="module")
def shape_8b(tmp_path_factory):
    """Llama-3.1-8B's config.json and nothing else: no weights, so any attempt to load them fails."""
    from benchmarks.shapes import shape_config

    folder = tmp_path_factory.mktemp("llama-3.1-8b")
    shape_config("llama-3.1-8b").save_pretrained(folder)
    return folder


def test_the_estimate_reads_the_config_and_orders_the_backends(shape_8b):
    inc = estimate_quantize_memory(shape_8b, QuantizeConfig(backend="inc", bits=4, evaluate=False), 1000)
    ov = estimate_quantize_memory(shape_8b, QuantizeConfig(backend="openvino", bits=4, evaluate=False), 1000)
    gguf = estimate_quantize_memory(shape_8b, QuantizeConfig(backend="gguf", scheme="q8_0", evaluate=False), 1000)
    assert inc.parameters == 8_030_261_248
    assert set(inc.phases) == {"export"} and inc.reference_dtype is None
    # fp32 weights for INC's packing (32 GB at 8B), bf16 compressed in place for NNCF, a tensor at a time for GGUF
    assert inc.total_gib > 8_030_261_248 * 4 / 2**30 > ov.total_gib > 8_030_261_248 * 2 / 2**30 > gguf.total_gib


def test_the_reference_runs_in_fp32_where_it_fits_and_in_bf16_where_only_that_fits(shape_8b):
    cfg = QuantizeConfig(backend="openvino", bits=4)
    roomy = estimate_quantize_memory(shape_8b, cfg, 1000)
    assert roomy.reference_dtype == "fp32" and set(roomy.phases) == {"export", "reference", "artifact"}
    tight = estimate_quantize_memory(shape_8b, cfg, roomy.total_gib - 1)
    assert tight.reference_dtype == "bf16"
    assert tight.phases["reference"] < roomy.phases["reference"] - 14  # 2 bytes fewer for each of 8B parameters


def test_an_8b_gguf_keeps_its_evaluation_dequantized_to_bf16(shape_8b):
    """transformers' own GGUF loading held a full fp32 copy beside the model (41 GiB at 8B); a tensor at a time in
    the reference's bf16, the evaluation fits 22 GiB."""
    estimate = estimate_quantize_memory(shape_8b, QuantizeConfig(backend="gguf", scheme="q8_0"), 22)
    assert estimate.reference_dtype == "bf16" and estimate.total_gib <= 22
    assert estimate.phases["artifact"] < 8_030_261_248 * 2.5 / 2**30


def test_a_run_that_cannot_fit_stops_before_loading_with_the_numbers(shape_8b, tmp_path, monkeypatch):
    monkeypatch.setenv(MEMORY_ENV, "22")
    with pytest.raises(InsufficientMemoryError) as err:
        quantize_model(model=str(shape_8b), backend="inc", bits=4, output_dir=str(tmp_path))
    text = str(err.value)
    assert "stopped before loading the model" in text and "22.0 GiB is available" in text
    assert "8.03 B parameters" in text and "export" in text
    assert "backend='openvino', bits=4" in text and "(fits)" in text  # what to change, with its own estimate
    assert not list(tmp_path.iterdir())  # nothing staged, nothing written


def test_the_command_line_prints_the_stop_and_exits_2(shape_8b, tmp_path, monkeypatch, capsys):
    from quantize.__main__ import main

    monkeypatch.setenv(MEMORY_ENV, "22")
    assert main(["--model", str(shape_8b), "--backend", "inc", "--bits", "4", "--output_dir", str(tmp_path)]) == 2
    assert "stopped before loading the model" in capsys.readouterr().err


def test_phase_peak_records_what_the_phase_allocated():
    import mmap

    peaks: dict = {}
    with phase_peak(peaks, "big"):
        block = mmap.mmap(-1, 128 * 2**20)  # fresh pages, whatever the allocator keeps of earlier tests' memory
        block.write(b"\1" * len(block))  # 128 MiB touched
        block.close()
    with phase_peak(peaks, "small"):
        pass
    assert peaks["big"] > peaks["small"] + 0.08  # the second phase starts afresh, not from the first's peak


def test_a_child_process_s_peak_counts_on_top_of_what_the_phase_started_with():
    peaks: dict = {}
    with phase_peak(peaks, "export"):
        child_peak(50.0)  # llama.cpp's converter, say, reporting its own VmHWM
    with phase_peak(peaks, "after"):
        pass
    assert peaks["export"] > 50.0 and peaks["after"] < 50.0  # on top of this process; not carried to the next phase


def test_a_run_records_its_estimate_and_each_phase_peak(tiny_model_dir, tmp_path, quick, monkeypatch):
    pytest.importorskip("optimum.intel")
    import quantize.api as api

    path = quantize_model(model=str(tiny_model_dir), backend="openvino", bits=8, output_dir=str(tmp_path), **quick)
    memory = read_metadata(path)["memory"]
    assert memory["reference_dtype"] == "fp32" and read_metadata(path)["source_speed"]["runtime"] == \
        "transformers fp32"
    assert set(memory["estimate_gib"]) == {"export", "reference", "artifact"}
    assert all(memory["peak_gib"][phase] > 0.1 for phase in ("export", "artifact"))

    # Where only a bf16 reference fits, the source is measured in bf16 and quantization.json says so.
    def bf16_estimate(source, cfg):
        estimate = api_estimate(source, cfg, 1000)
        return type(estimate)(estimate.phases, estimate.parameters, "bf16")

    api_estimate = estimate_quantize_memory
    monkeypatch.setattr(api, "check_quantize_memory", bf16_estimate)
    path = quantize_model(model=str(tiny_model_dir), backend="openvino", bits=8, output_dir=str(tmp_path),
                          name="bf16-reference", **quick)
    meta = read_metadata(path)
    assert meta["memory"]["reference_dtype"] == "bf16" and meta["source_speed"]["runtime"] == "transformers bf16"
    assert meta["memory"]["peak_gib"]["reference"] > 0.1  # measured afresh, not the fp32 reference's cache


def test_a_gguf_artifact_is_evaluated_in_the_reference_s_precision(tiny_real_vocab_dir, tmp_path, quick,
                                                                   monkeypatch):
    import quantize.api as api
    from quantize import gguf_export

    def bf16_estimate(source, cfg):
        estimate = api_estimate(source, cfg, 1000)
        return type(estimate)(estimate.phases, estimate.parameters, "bf16")

    api_estimate = estimate_quantize_memory
    monkeypatch.setattr(api, "check_quantize_memory", bf16_estimate)
    reported = []
    monkeypatch.setattr(gguf_export, "child_peak", lambda gib: (reported.append(gib), child_peak(gib)))
    meta = read_metadata(quantize_model(model=str(tiny_real_vocab_dir), backend="gguf", scheme="q8_0",
                                        output_dir=str(tmp_path), **quick))
    # llama.cpp's converter ran in its own process and its peak (a Python with torch: over 0.2 GiB) came back
    assert len(reported) == 1 and reported[0] > 0.2
    assert meta["memory"]["peak_gib"]["export"] >= reported[0]
    assert meta["speed"]["runtime"] == "transformers (GGUF dequantized to bf16)"
    assert meta["source_speed"]["runtime"] == "transformers bf16"
    assert abs(meta["quality"]["perplexity_delta_pct"]) < 2  # q8_0 against the same model, both in bf16
