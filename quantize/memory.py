"""How much memory quantize_model will need, estimated from config.json before any weight is loaded.

quantize_model runs its phases one after another in one process, each dropping what it loaded before the next
starts: the backend's export, then (evaluate=True) the source's reference outputs, then the artifact's own. The
run's peak is its largest phase. Each phase is bytes per parameter of what it holds, plus the process:

- export, inc: Neural Compressor's weight-only modules quantize fp32 weights only (their packing goes through
  numpy, which has no bf16: a bf16 model fails in `pack_tensor_with_numpy`), so the source loads in fp32, and the
  packed copy and one layer's temporaries come on top;
- export, openvino: optimum-intel loads the source in its stored dtype (bf16) and NNCF compresses it in place;
- export, gguf: llama.cpp's converter reads the safetensors lazily, a tensor at a time, in a process of its own
  whose peak counts on top of ours (3.5 GiB of its own at 8B);
- export, web: torch.onnx traces the model in fp32 and the graph holds a second copy of the weights;
- reference: the source in fp32 (4 bytes) when the run fits with it, else in bf16 (2 bytes), the precision it is
  stored in; quantization.json says which (`reference_dtype`);
- artifact: INC's skeleton in fp32 with the packed weights beside it; GGUF dequantized, a tensor at a time
  (finetune.gguf_weights), to the reference's dtype; OpenVINO and ONNX at about their weight bytes.

Fitted on each phase's own peak (quantization.json `memory.peak_gib`, VmHWM reset between phases) at two sizes
(CALIBRATION), and checked at larger ones with `python -m benchmarks quantize --shape NAME` (random weights of a
real shape written to disk in bf16). The peaks count file pages too: a bf16 reference maps the checkpoint and
reads it as the forward needs it, pages the kernel can drop and read again, so the estimate is on the safe side
there.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

from finetune.memory import (
    GIB,
    MEMORY_ENV,
    InsufficientMemoryError,
    available_gib,
    count_parameters,
    model_config,
    peak_rss_mb,
    reset_peak_rss,
)

_CHILD_PEAKS: list[float] = []  # GiB: the own peaks of the child processes the current phase ran


def child_peak(gib: float) -> None:
    """Report a child process's own peak (llama.cpp's converter runs in one) to the phase that started it."""
    _CHILD_PEAKS.append(gib)


@contextmanager
def phase_peak(peaks: dict, name: str):
    """Record in peaks[name] the peak resident memory (GiB) of the code inside, started afresh from what the process
    holds on entry (where the kernel allows it; else the peak carries over from before, an upper bound). A child
    process that reported its own peak (child_peak) counts on top of what this process held on entry."""
    fresh = reset_peak_rss()
    entry = peak_rss_mb() / 1024 if fresh else 0.0
    _CHILD_PEAKS.clear()
    try:
        yield
    finally:
        peaks[name] = round(max([peak_rss_mb() / 1024] + [entry + gib for gib in _CHILD_PEAKS]), 2)
        _CHILD_PEAKS.clear()
        if not fresh:
            peaks.setdefault("carried_over", True)


# (GiB, bytes per parameter) of each phase's peak: the process as it enters the phase (torch, transformers, the
# backend's libraries, and what the phases before it left behind) and what it holds per parameter. Fitted on the
# peaks in CALIBRATION, rounded up.
EXPORT = {"inc": (0.5, 6.2), "openvino": (1.2, 2.3), "gguf": (1.2, 0.4), "web": (1.2, 16.0)}
REFERENCE_FP32 = {"inc": (0.9, 7.2), "web": (1.6, 6.2), "default": (0.8, 6.2)}  # + the bf16 file while converting
REFERENCE_BF16 = {"inc": (0.9, 3.4), "web": (1.6, 2.4), "default": (0.8, 2.4)}  # the bf16 file mapped as it is
ARTIFACT = {"inc": (1.2, 6.7), "web": (1.3, 6.0), "openvino-4": (1.1, 1.4), "openvino-8": (1.1, 2.3),
            "gguf-fp32": (0.7, 4.1), "gguf-bf16": (0.9, 2.1)}  # INC's fp32 skeleton; GGUF dequantized
CALIBRATION = """Peak resident memory (VmHWM, reset between phases) of quantize_model with evaluation, 2 cores of the
AMD EPYC Zen 4, 2026-12-06, in GiB: SmolLM2-135M (134.5 M parameters) / the Llama-3.2-1B shape (1,235.8 M) / the
Llama-3.2-3B shape (3,212.7 M) / the Llama-3.1-8B shape (8,030.3 M); shapes as random bf16 weights on disk,
`python -m benchmarks quantize --shape NAME`; "-" not run, "c" the reference came from the cache:
  inc int4 rtn:  export 1.09 / 7.44 / 18.49 / -, reference (fp32) 1.72 / 9.03 / c, artifact 2.02 / 8.80 / 18.26
  openvino int4: export 1.39 / - / 8.65 / 17.72, reference 1.44 / - / c / 15.21 (bf16), artifact 1.22 / - / 5.13 / 9.35
  openvino int8: export 1.39 / - / 9.70, reference 1.46 / - / 18.81, artifact 1.33 / - / 7.82
  gguf q8_0:     export (llama.cpp's converter process included) 1.19 / - / - / 4.02, reference 1.15 / 7.44 / c,
                 artifact (a tensor at a time, finetune.gguf_weights) in fp32 1.20 / - / 12.88, in bf16 1.16 / - / 7.11
                 / 16.34 (the 3B artifact's two: quantize.api.measure run again on the benchmark's artifact in each
                 dtype)
  web int4:      export 3.18, reference 2.33, artifact 1.94 (one size: the browser holds small models only)
  the 1B shape's bf16 reference (openvino int8, the limit set to 5 GiB): 3.41
The 1B shape's OpenVINO rows are left out: they were measured while every layer's matrices held equal values, which
OpenVINO's serializer stores once (finetune.models._random_model now gives each matrix its own).
The fp32 reference peaks at its 4 bytes per parameter plus the 2 of the bf16 file pages read while converting
(1B: 7.55 GiB at the end of loading, 5.2 after); a bf16 load maps the file as it is (0.5 GiB after loading, the
pages coming in as the forward reads them: 3.0 GiB after one). File pages are the kernel's to drop when memory runs
short: the OpenVINO export held 2.9 bytes per parameter at 3B with memory to spare, 2.1 at 8B with 22.4 GiB
available, and finished; its line goes through SmolLM2 and 8B, and lies 1.6 GiB below the 3B peak."""


@dataclass(frozen=True)
class QuantizeMemoryEstimate:
    """Peak resident memory of each phase of a quantize_model run, in GiB; the run's peak is the largest."""

    phases: dict[str, float]
    parameters: int
    reference_dtype: str | None  # "fp32" or "bf16"; None without evaluation

    @property
    def total_gib(self) -> float:
        return max(self.phases.values())

    def render(self) -> str:
        parts = ", ".join(f"{name} {gib:.1f}" for name, gib in self.phases.items())
        return f"{self.total_gib:.1f} GiB (by phase: {parts}; {self.parameters / 1e9:.2f} B parameters)"


def _phases(parameters: int, cfg, reference: str | None) -> dict[str, float]:
    def gib(fit: tuple[float, float]) -> float:
        return round(fit[0] + parameters * fit[1] / GIB, 2)

    phases = {"export": gib(EXPORT[cfg.backend])}
    if reference is not None:
        fits = REFERENCE_FP32 if reference == "fp32" else REFERENCE_BF16
        phases["reference"] = gib(fits.get(cfg.backend, fits["default"]))
        bits = 8 if (cfg.bits or 8) > 4 else 4
        artifact = {"openvino": f"openvino-{bits}", "gguf": f"gguf-{reference}"}.get(cfg.backend, cfg.backend)
        phases["artifact"] = gib(ARTIFACT[artifact])
    return phases


def estimate_quantize_memory(source, cfg, limit_gib: float | None = None) -> QuantizeMemoryEstimate:
    """The phases' peaks of quantizing the model folder `source` as `cfg` says, from its config.json alone. The
    reference runs in fp32 when the run fits with it in `limit_gib` (None: available_gib()), else in bf16."""
    parameters = count_parameters(model_config(source))
    if not cfg.evaluate:
        return QuantizeMemoryEstimate(_phases(parameters, cfg, None), parameters, None)
    if limit_gib is None:
        limit_gib = available_gib()[0]
    fp32 = QuantizeMemoryEstimate(_phases(parameters, cfg, "fp32"), parameters, "fp32")
    if limit_gib is None or fp32.total_gib <= limit_gib:
        return fp32
    return QuantizeMemoryEstimate(_phases(parameters, cfg, "bf16"), parameters, "bf16")


def check_quantize_memory(source, cfg) -> QuantizeMemoryEstimate:
    """The estimate; raises InsufficientMemoryError with the estimate, the memory available and what would fit
    when even the bf16 reference does not."""
    limit, where = available_gib()
    estimate = estimate_quantize_memory(source, cfg, limit)
    if limit is None or estimate.total_gib <= limit:
        return estimate
    lines = []
    for what, changes in (("evaluate=False (no perplexity, agreement or speed in quantization.json)",
                           {"evaluate": False}),
                          ("backend='openvino', bits=4 (NNCF compresses the bf16 weights in place)",
                           {"backend": "openvino", "bits": 4, "scheme": "rtn", "group_size": cfg.group_size or 128}),
                          ("backend='gguf' (llama.cpp's converter reads a tensor at a time)",
                           {"backend": "gguf", "scheme": "q4_k_m", "bits": None, "group_size": None})):
        if all(getattr(cfg, k) == v for k, v in changes.items()):
            continue
        other = copy.copy(cfg)  # not dataclasses.replace: only the fields the estimate reads change
        for key, value in changes.items():
            setattr(other, key, value)
        other = estimate_quantize_memory(source, other, limit)
        lines.append(f"  {what}: {other.total_gib:.1f} GiB" + (" (fits)" if other.total_gib <= limit else ""))
    raise InsufficientMemoryError(
        f"Quantizing {source} ({cfg.backend} {cfg.tag}) would need about {estimate.render()} at its peak, and "
        f"{limit:.1f} GiB is available ({where}); stopped before loading the model. Change one of:\n"
        + "\n".join(lines) + f"\n(set {MEMORY_ENV} to run anyway with a figure of your own)")

