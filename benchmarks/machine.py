"""What every benchmark result records about where it ran, and the physical limits it is compared against."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path

# the timing every benchmark shares
from finetune.hardware import fastest_call, matmul_gflops, matmul_precision  # noqa: F401
from finetune.memory import peak_rss_mb  # noqa: F401  (the benchmarks' peak RSS: one definition)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def machine_info() -> dict:
    import torch

    from finetune.hardware import detect_hardware

    versions = {}
    for name in ("torch", "transformers", "peft", "trl", "openvino", "openvino-genai", "neural-compressor"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        # "-dirty" when the working tree differs from the commit: the figures then belong to uncommitted code
        commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=REPO,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    training, why = matmul_precision()
    return {
        # serving decodes in cpu_precision; training (and a served prompt) computes in training_precision
        "hardware": {**detect_hardware().as_dict(), "training_precision": training,
                     "training_precision_reason": why},
        "cpu_flags": sorted(_cpu_flags()),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1min": os.getloadavg()[0],  # a busy machine makes every figure of the run suspect
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": commit,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def train_precision(device: str = "cpu") -> str:
    """The precision training runs in on `device` (finetune.hardware.matmul_precision decides): bf16 on a GPU and
    on a CPU with AMX, the faster of the two where bf16 runs on AVX512-BF16 only, fp32 on other CPUs. Every limit a
    benchmark reports is measured in this precision."""
    if device != "cpu":
        return "bf16"
    return matmul_precision()[0]


def serve_precision() -> str:
    """The precision serving runs in on this CPU (finetune.hardware.Hardware.cpu_precision): bf16 wherever the CPU
    has bf16 instructions, where training may measure fp32 faster (train_precision)."""
    from finetune.hardware import detect_hardware

    return detect_hardware().cpu_precision[0]


def _cpu_flags() -> set[str]:
    """The ISA flags that decide kernels (every vector and matrix extension /proc/cpuinfo names)."""
    from finetune.hardware import read_cpuinfo

    return {f for f in read_cpuinfo()[1] if f.startswith(("avx", "amx", "fma", "f16c", "sse"))}


def same_cpu(a: dict, b: dict) -> bool:
    """Whether two results' machine_info() name the same CPU (model and ISA): only such results share a ratio."""
    ha, hb = a.get("hardware", {}), b.get("hardware", {})
    return (ha.get("cpu_model"), ha.get("isa"), ha.get("cpu_precision")) == (
        hb.get("cpu_model"), hb.get("isa"), hb.get("cpu_precision"))


def cpu_label(info: dict) -> str:
    """"<CPU model> (<ISA>, trains in <precision>[, decodes in <precision>])" of a machine_info(): how every table
    names where it ran."""
    hw = info.get("hardware", {})
    isa = hw.get("isa") or ("AMX" if hw.get("amx_bf16") else "ISA not recorded")
    serving = hw.get("cpu_precision") or ("bf16" if hw.get("cpu_bf16") else "fp32")
    training = hw.get("training_precision") or serving  # results from before 2026-12-08 recorded serving's only
    decodes = "" if training == serving else f", decodes in {serving}"
    return f"{hw.get('cpu_model', 'unknown CPU')} ({isa}, trains in {training}{decodes})"


def matmul_peaks(device: str = "cpu", n: int = 2048, seconds: float = 2.0) -> tuple[dict, dict]:
    """({"bf16": GFLOPS, "fp32": GFLOPS}, {precision: matrix size}) on this process's threads.

    The training precision is timed at n^3. On a CPU without bf16 instructions a bf16 matmul has no fast kernel
    (an AVX2 machine took minutes for one 4096^3): there bf16 is timed at 512^3, for comparison only, so the run
    takes about as long on every CPU."""
    precision = train_precision(device)
    slow = "bf16" if precision == "fp32" and device == "cpu" else None
    sizes = {name: min(n, 512) if name == slow else n for name in ("bf16", "fp32")}
    return {name: matmul_gflops(name, n=size, seconds=seconds, device=device) for name, size in sizes.items()}, sizes


def model_linear_shapes(config) -> list[tuple[int, int, int]]:
    """(in_features, out_features, uses per training step) of every linear of a decoder-only model's config:
    the attention and MLP projections of each layer, and the lm_head once (a multimodal model's language model)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    layers, shapes = config.num_hidden_layers, {}
    for fan_in, fan_out in ((hidden, heads * head_dim), (hidden, kv_heads * head_dim), (hidden, kv_heads * head_dim),
                            (heads * head_dim, hidden), (hidden, config.intermediate_size),
                            (hidden, config.intermediate_size), (config.intermediate_size, hidden)):
        shapes[fan_in, fan_out] = shapes.get((fan_in, fan_out), 0) + layers  # q, k, v, o, gate, up, down
    return [(fan_in, fan_out, uses) for (fan_in, fan_out), uses in shapes.items()] + [
        (hidden, config.vocab_size, 1)]


def model_shape_gflops(config_or_model_path, tokens: int = 1024, seconds: float = 0.4,
                       precision: str = "bf16") -> float:
    """Effective GFLOPS of a training step's matmuls at the model's own shapes in `precision` ("bf16" or "fp32",
    the machine's training precision: train_precision), on this process's threads.

    Each linear of model_linear_shapes is timed (best of 4 windows in `seconds`) with F.linear, forward
    (x[T,in] @ W[out,in]^T) and backward grad-input (g[T,out] @ W[out,in]), T = `tokens`. Returns total FLOPs
    over total time, each shape weighted by its uses in one step. Small layers run below the 4096^3 peak of
    matmul_gflops: this is the peak the model can reach. `config_or_model_path`: a transformers config, or a
    local model folder (its config.json)."""
    import torch
    import torch.nn.functional as F

    config = config_or_model_path
    if isinstance(config, (str, Path)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(config)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    total_flops = total_seconds = 0.0
    with torch.inference_mode():
        for fan_in, fan_out, uses in model_linear_shapes(config):
            weight = torch.randn(fan_out, fan_in, dtype=dtype)
            for x, w in ((torch.randn(tokens, fan_in, dtype=dtype), weight),  # forward
                         (torch.randn(tokens, fan_out, dtype=dtype), weight.t())):  # grad-input
                for _ in range(2):
                    F.linear(x, w)
                total_flops += 2 * tokens * fan_in * fan_out * uses
                total_seconds += fastest_call(functools.partial(F.linear, x, w), seconds) * uses
    return total_flops / total_seconds / 1e9


def memory_read_gbps(gib: float = 1.0, repeats: int = 5) -> float:
    """Read bandwidth: best of a few full passes summing a large array (each byte read once per pass)."""
    import torch

    x = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best / 1e9


def energy_joules(device: str = "cpu") -> float | None:
    """A monotonic energy counter in joules where the host exposes one: RAPL package counters on a CPU, NVML's
    total energy on a GPU. None where neither is readable (most VMs): callers then report no energy figure.
    Wrap-around of RAPL counters is not handled: use it over intervals of seconds to minutes."""
    import glob

    if device == "cuda":
        try:
            import pynvml

            pynvml.nvmlInit()
            return pynvml.nvmlDeviceGetTotalEnergyConsumption(pynvml.nvmlDeviceGetHandleByIndex(0)) / 1000
        except Exception:  # no pynvml, no driver support: energy is simply not measurable here
            return None
    files = [f for f in glob.glob("/sys/class/powercap/intel-rapl:*/energy_uj") if f.count(":") == 1]
    try:
        return sum(int(Path(f).read_text()) for f in files) / 1e6 if files else None
    except (OSError, ValueError):
        return None


def save_json(name: str, payload: dict) -> Path:
    import json

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    latest = RESULTS / f"{name}-latest.json"
    latest.write_text(path.read_text())
    return path


def publish(name: str, payload: dict, table: str) -> Path:
    """Save a benchmark's JSON and its rendered table side by side, and print the table."""
    path = save_json(name, payload)
    path.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"saved {path}")
    return path


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """columns: (key, header). Floats are shown with 3 significant digits, missing values as '-'."""
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)
