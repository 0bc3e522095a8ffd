"""Hardware detection, precision choice and thread settings.

pytest tests/finetune/test_hardware.py
"""

import dataclasses
import json
import os

import pytest
import torch

from finetune import hardware


def test_detects_this_machine():
    hw = hardware.detect_hardware()
    assert hw.usable_cores >= 1 and hw.cpu_model
    assert hw.cuda == torch.cuda.is_available()
    facts = hw.as_dict()
    assert facts["cpu_bf16"] == (facts["cpu_precision"] == "bf16") and facts["cpu_precision_reason"]
    if not hw.onednn_isa_limit:
        assert hw.cpu_bf16 == (hw.amx_bf16 or hw.avx512_bf16)


@pytest.mark.parametrize("flags, limit, precision, because", [
    ({"amx_bf16", "avx512_bf16", "avx512f", "avx2"}, None, "bf16", "AMX-BF16 is present"),
    ({"avx512_bf16", "avx512f", "avx2"}, None, "bf16", "AVX512-BF16 is present"),
    ({"avx512f", "avx2"}, None, "fp32", "AVX-512 without bf16"),
    ({"avx2", "fma"}, None, "fp32", "AVX2 only"),
    ({"amx_bf16", "avx512_bf16", "avx512f", "avx2"}, "AVX2", "fp32", "ONEDNN_MAX_CPU_ISA=AVX2"),
    ({"amx_bf16", "avx512_bf16", "avx512f", "avx2"}, "AVX512_CORE_BF16", "bf16", "AMX-BF16 is present"),
    ({"amx_bf16", "avx512_bf16", "avx512f", "avx2"}, "AVX10_1_512_AMX", "bf16", "AMX-BF16 is present"),
])
def test_precision_follows_the_cpu_with_its_reason(flags, limit, precision, because):
    chosen, why = hardware.cpu_precision(flags, limit)
    assert (chosen, because in why) == (precision, True), why


def test_compute_summary_names_precision_reason_threads_and_allocator(monkeypatch):
    plain = dataclasses.replace(hardware.detect_hardware(), amx_bf16=False, avx512_bf16=False, avx512f=False,
                                avx2=True, onednn_isa_limit=None, cpu_model="AMD EPYC 7B13")
    monkeypatch.setattr(hardware, "detect_hardware", lambda: plain)
    line = hardware.compute_summary("cpu", threads=2)
    assert line.startswith("AMD EPYC 7B13 (AVX2): fp32, because AVX2 only") and "2 thread(s)" in line
    assert "allocator" in line
    assert "bf16 as asked (this CPU's best: fp32" in hardware.compute_summary("cpu", "bf16", threads=2)


def test_fp16_on_cpu_explains_bf16():
    with pytest.raises(ValueError, match="bf16=True"):
        hardware.resolve_precision(bf16=False, fp16=True, device="cpu")


def test_bf16_without_cpu_support_falls_back_to_fp32_with_a_warning(monkeypatch):
    plain = dataclasses.replace(hardware.detect_hardware(), amx_bf16=False, avx512_bf16=False)
    monkeypatch.setattr(hardware, "detect_hardware", lambda: plain)
    with pytest.warns(UserWarning, match="falls back to fp32"):
        assert hardware.resolve_precision(bf16=True, fp16=False, device="cpu") == "fp32"


def test_threads_split_the_cores_between_local_processes(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(hardware, "usable_cores", lambda: 8)
        assert hardware.configure_threads(local_world_size=2) == 4
        assert torch.get_num_threads() == 4
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert hardware.configure_threads(local_world_size=2) == 3
    finally:
        torch.set_num_threads(before)


def test_kernel_caches_are_bounded_unless_the_user_set_them(monkeypatch):
    from finetune.hardware import KERNEL_CACHE_CAPACITY, limit_kernel_caches

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "4096")
    limit_kernel_caches()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == KERNEL_CACHE_CAPACITY["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]
    assert int(KERNEL_CACHE_CAPACITY["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]) >= 256  # fewer recompiles: slower
    assert os.environ["LRU_CACHE_CAPACITY"] == "4096"


def test_cpulist_parses_and_formats_back():
    assert hardware.parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert hardware.format_cpulist([11, 0, 1, 2, 3, 8, 10]) == "0-3,8,10-11"


def test_physical_cpus_leaves_out_hyperthread_siblings(tmp_path):
    for cpu in range(8):  # cores 0-3 with siblings 4-7
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        topo.joinpath("thread_siblings_list").write_text(f"{cpu % 4},{cpu % 4 + 4}\n")
    assert hardware.physical_cpus(list(range(8)), tmp_path) == [0, 1, 2, 3]
    assert hardware.physical_cpus([4, 5], tmp_path) == [4, 5]  # only one sibling allowed: keep it


def test_numa_nodes_come_in_node_order_from_sysfs(tmp_path):
    for node, cpus in ((10, "8-9"), (2, "4-7"), (0, "0-3\n")):
        (tmp_path / f"node{node}").mkdir()
        (tmp_path / f"node{node}" / "cpulist").write_text(cpus)
    (tmp_path / "node3").mkdir()  # no cpulist: left out
    assert hardware.numa_cpus(tmp_path) == {0: [0, 1, 2, 3], 2: [4, 5, 6, 7], 10: [8, 9]}
    assert list(hardware.numa_cpus(tmp_path)) == [0, 2, 10]


def test_this_machines_probes_agree():
    cpu, memory = hardware.read_cpu(), hardware.memory_gib()
    assert 1 <= cpu.usable == len(hardware.allowed_cpus()) <= cpu.logical
    assert memory["total"] is None or memory["total"] > 0


def _avx512_bf16_only(monkeypatch):
    hw = dataclasses.replace(hardware.detect_hardware(), amx_bf16=False, amx_int8=False, avx512_bf16=True,
                             onednn_isa_limit=None)
    monkeypatch.setattr(hardware, "detect_hardware", lambda: hw)
    return hw


@pytest.mark.parametrize(("speeds", "precision", "because"), [
    ({"bf16": 164.0, "fp32": 326.0}, "fp32", "its bf16 matmuls measured 164 GFLOPS against 326 in fp32 on this CPU, "
                                             "so fp32 computes them faster"),  # the Emerald Rapids guest, AMX hidden
    ({"bf16": 420.0, "fp32": 300.0}, "bf16", "measured here 420 GFLOPS in bf16 against 300 in fp32"),  # a Zen 4
])
def test_training_takes_the_faster_precision_where_bf16_has_no_amx(monkeypatch, speeds, precision, because):
    _avx512_bf16_only(monkeypatch)
    monkeypatch.setattr(hardware, "matmul_speeds", lambda: speeds)
    chosen, why = hardware.matmul_precision()
    assert chosen == precision and because in why
    assert hardware.detect_hardware().cpu_precision[0] == "bf16"  # serving: bf16 halves the weights decoding reads
    line = hardware.compute_summary("cpu", training=True)
    assert f": {precision}, because {why}" in line


def test_amx_and_cpus_without_bf16_are_not_measured(monkeypatch):
    def unexpected():
        raise AssertionError("measured")

    monkeypatch.setattr(hardware, "matmul_speeds", unexpected)
    for amx, avx512_bf16 in ((True, True), (False, False)):
        hw = dataclasses.replace(hardware.detect_hardware(), amx_bf16=amx, avx512_bf16=avx512_bf16,
                                 onednn_isa_limit=None)
        assert hardware.matmul_precision(hw)[0] == ("bf16" if amx else "fp32")


def test_the_matmul_speeds_are_measured_once_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(hardware, "matmul_gflops", lambda name, **kw: calls.append(name) or 100.0)
    assert hardware.matmul_speeds() == {"bf16": 100.0, "fp32": 100.0} == hardware.matmul_speeds()
    assert calls == ["bf16", "fp32"]  # the second answer came from the cache home
    (key,) = json.loads((tmp_path / "matmul_speeds.json").read_text())
    assert f"torch {torch.__version__}" in key and f"{torch.get_num_threads()} threads" in key
