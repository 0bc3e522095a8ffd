"""What this machine can do: AMX / AVX512-BF16 / CUDA, usable cores, and the precision and threads that follow."""

from __future__ import annotations

import functools
import logging
import os
import platform
import warnings
from dataclasses import asdict, dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    cpu_model: str
    usable_cores: int
    amx_bf16: bool
    amx_int8: bool
    avx512_bf16: bool
    avx512_vnni: bool
    cuda: bool
    cuda_device: str | None

    @property
    def cpu_bf16(self) -> bool:
        """True when the CPU runs bf16 matmuls natively (AMX or AVX512-BF16), so bf16 is faster than fp32."""
        return self.amx_bf16 or self.avx512_bf16

    def as_dict(self) -> dict:
        return {**asdict(self), "cpu_bf16": self.cpu_bf16, "torch_threads": torch.get_num_threads()}


def _cpu_flags_and_model() -> tuple[set[str], str]:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if flags and line.startswith("model name"):
                    break
    except OSError:  # not Linux: fall back to what PyTorch reports
        capability = torch.backends.cpu.get_cpu_capability().lower()
        if "avx512" in capability:
            flags.add("avx512f")
    return flags, model


def usable_cores() -> int:
    """Cores this process may run on (affinity and cgroup aware where the OS tells), not the host's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def detect_hardware() -> Hardware:
    flags, model = _cpu_flags_and_model()
    cuda = torch.cuda.is_available()
    return Hardware(
        cpu_model=model,
        usable_cores=usable_cores(),
        amx_bf16="amx_bf16" in flags,
        amx_int8="amx_int8" in flags,
        avx512_bf16="avx512_bf16" in flags,
        avx512_vnni="avx512_vnni" in flags,
        cuda=cuda,
        cuda_device=torch.cuda.get_device_name(0) if cuda else None,
    )


def configure_threads(local_world_size: int = 1) -> int:
    """Give each process its share of the usable cores.

    Two processes each running 2 OpenMP threads on 2 cores made decoding fall from 16 to under 1 tok/s on
    this machine class, so the share is never rounded up. An explicit OMP_NUM_THREADS always wins.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        threads = int(os.environ["OMP_NUM_THREADS"])
    else:
        threads = max(1, usable_cores() // max(1, local_world_size))
    torch.set_num_threads(threads)
    return threads


# Kernels per cache. oneDNN's own cache holds the compiled kernels; ideep (PyTorch's layer over oneDNN) keeps a
# second cache of whole primitives over the same kernels, which a miss rebuilds from oneDNN's cache without
# compiling anything, so it can be small.
KERNEL_CACHE_CAPACITY = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256", "LRU_CACHE_CAPACITY": "16"}


def limit_kernel_caches() -> None:
    """Bound oneDNN's caches of compiled matmul kernels for training on batches of varying length.

    oneDNN (and PyTorch's ideep layer over it) keeps up to 1024 kernels each, one per shape, and a padding-free
    batch has a new token count, so new shapes, at every step: measured here (SmolLM2-135M LoRA, chats of varied
    length, 2 cores, 35 steps) resident memory grew from 2.2 to 3.1 GB, while the same batches repeated stayed at
    2.2 GB. With 256 kernels per cache it stayed at 2.2-2.5 GB at the same speed (652 vs 653 tok/s; 128: 2.4 GB,
    643 tok/s; 16 in oneDNN's cache halves the speed: one step needs more). ideep's cache at 16 costs nothing
    (32 steps: 657 vs 659 tok/s) and lowers the peak by 140 MB (2.45 vs 2.59 GB). Both libraries read the
    variables when they build their first kernel, so this acts only before the process's first matmul; an
    explicit setting wins.
    """
    for name, capacity in KERNEL_CACHE_CAPACITY.items():
        os.environ.setdefault(name, capacity)


def openvino_cpu_properties() -> dict:
    """OpenVINO CPU plugin properties that keep to this process's thread budget (OMP_NUM_THREADS).

    INFERENCE_NUM_THREADS=1 is left out: openvino-genai 2026.4 died with SIGFPE building a
    ContinuousBatchingPipeline with it on this machine class (a standalone process, reproducibly).
    """
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
    return {"INFERENCE_NUM_THREADS": threads} if threads > 1 else {}


def resolve_precision(bf16: bool, fp16: bool, device: str) -> str:
    """Return "bf16", "fp16" or "fp32" for a run on `device`, or raise when the request cannot be honoured."""
    if device == "cpu":
        if fp16:
            raise ValueError(
                "fp16=True was set, but training on CPU runs in bf16, not fp16: fp16 needs loss scaling and has no "
                "fast CPU kernels, while bf16 runs on AMX / AVX512-BF16. Set bf16=True (or --bf16 True) instead."
            )
        if bf16 and not detect_hardware().cpu_bf16:
            warnings.warn(
                "bf16 was requested but this CPU has neither AMX nor AVX512-BF16: training falls back to fp32, "
                "which is correct but about 2-4x slower than bf16 on a CPU that has it.",
                stacklevel=2,
            )
            return "fp32"
        return "bf16" if bf16 else "fp32"
    if fp16:
        return "fp16"
    return "bf16" if bf16 else "fp32"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
