"""The llama.cpp build flags follow the CPU: no AVX-512 code for an AVX2-only machine, never AMX.

pytest tests/benchmarks/test_llamacpp_build.py
"""

from benchmarks import llamacpp

EPYC_AVX2 = {"avx", "avx2", "fma", "f16c", "sse4_2"}
XEON_AMX = EPYC_AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_tile", "amx_int8"}


def test_avx2_machine_gets_no_avx512_code():
    args = llamacpp.cmake_args(EPYC_AVX2).split()
    assert "-DGGML_NATIVE=OFF" in args and {"-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON"} <= set(args)
    assert {"-DGGML_AVX512=OFF", "-DGGML_AVX512_VNNI=OFF", "-DGGML_AVX512_BF16=OFF"} <= set(args)


def test_amx_xeon_gets_avx512_but_never_amx():
    args = llamacpp.cmake_args(XEON_AMX)
    assert "-DGGML_AVX512=ON" in args and "-DGGML_AVX512_BF16=ON" in args and "-DGGML_AVX512_VNNI=ON" in args
    assert "AMX" not in args


def test_flags_command_prints_this_machines_args(capsys):
    from finetune.hardware import read_cpuinfo

    assert llamacpp.main(["flags"]) == 0
    assert capsys.readouterr().out.strip() == llamacpp.cmake_args(read_cpuinfo()[1])
    assert "build" in llamacpp.PORTABLE_BUILD
