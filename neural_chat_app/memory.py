"""How serving holds a model on the CPU, chosen from the memory estimate (finetune.serving_memory) before any
weight is loaded, and the refusal, with what would fit, where nothing does.

`load_torch` asks `plan_serving`: weights in the compute precision when they fit; on a CPU without bf16 matmuls
whose fp32 weights do not fit, bf16 weights computed in fp32 (finetune.frozen_weights); else InsufficientMemoryError
with the figures and the alternatives (bf16 weights, one request at a time, OpenVINO INT4/INT8 artifacts).
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune.memory import GIB, MEMORY_ENV, InsufficientMemoryError, MemoryEstimate, available_gib, model_config
from finetune.serving_memory import PROMPT_COPY, render_parts, serving_estimate, serving_shapes, serving_storage


@dataclass(frozen=True)
class ServingPlan:
    """How a model is held for serving on the CPU: `storage` (the weights' dtype) and `compute` ("bf16" or "fp32"),
    the estimate and why, in words."""

    storage: str
    compute: str
    estimate: MemoryEstimate
    reason: str

    @property
    def narrow(self) -> bool:
        """Weights stored narrower than they compute in (bf16 weights, fp32 compute)."""
        return self.storage != self.compute

    @property
    def prompt_copy(self) -> bool:
        """bf16 weights reordered for decoding that keep their plain copy for prompts computed in fp32."""
        return PROMPT_COPY in self.estimate.parts


def plan_serving(model_path, compute: str, max_concurrency: int = 1, narrow_allowed: bool = True,
                 trust_remote_code: bool = False, limit_gib: float | None = None,
                 prompt_copy: bool = False) -> ServingPlan:
    """How to hold the model in `model_path` to compute in `compute` (`narrow_allowed`: fp32 compute may keep
    bf16 weights where fp32 ones do not fit; `prompt_copy`: bf16 weights keep a plain copy for prompts computed in
    fp32, where it fits); raises InsufficientMemoryError, before anything is loaded, when no way fits in
    `limit_gib` (None: available_gib())."""
    shapes = serving_shapes(model_config(model_path, trust_remote_code))
    source = "passed in"
    if limit_gib is None:
        limit_gib, source = available_gib()
    storage, same, narrow = serving_storage(shapes, compute, max_concurrency, narrow_allowed, limit_gib, prompt_copy)
    if storage == compute:
        reason = f"{compute} weights: {same.total_gib:.1f} GiB estimated, {_available(limit_gib, source)}"
        if PROMPT_COPY in same.parts:
            reason += f", with a plain copy of them for prompts computed in fp32 ({same.parts[PROMPT_COPY]:.1f} GiB)"
        elif prompt_copy and compute == "bf16":
            copy = serving_estimate(shapes, compute, compute, max_concurrency, limit_gib, prompt_copy=True)
            reason += (f"; prompts run in bf16: the plain copy of the weights that fp32 prompts read "
                       f"({copy.parts[PROMPT_COPY]:.1f} GiB more) does not fit")
        return ServingPlan(compute, compute, same, reason)
    if storage is not None:
        return ServingPlan(storage, compute, narrow, (
            f"fp32 weights would need {same.total_gib:.1f} GiB and {_available(limit_gib, source)}: weights kept "
            f"in bf16 ({narrow.total_gib:.1f} GiB) and widened to fp32 a layer at a time; a decode step's "
            f"matrix-vector products run on the bf16 weights with fp32 sums"))
    raise InsufficientMemoryError(_refusal(model_path, shapes, same, compute, max_concurrency, limit_gib, source))


def _available(limit_gib: float | None, source: str) -> str:
    return f"{limit_gib:.1f} GiB available ({source})" if limit_gib is not None else "available memory unknown"


def _refusal(model_path, shapes: dict, estimate: MemoryEstimate, compute: str, max_concurrency: int,
             limit_gib: float, source: str) -> str:
    lines = []

    def option(what: str, gib: float, extra: str = "") -> None:
        lines.append(f"  {what}: {gib:.1f} GiB" + (" (fits)" if gib <= limit_gib else "") + extra)

    if compute == "fp32":
        bf16 = serving_estimate(shapes, "bf16", "fp32", max_concurrency, limit_gib)
        option("bf16 weights computed in fp32 (what MixedPrecisionConfig() does when fp32 does not fit)",
               bf16.total_gib)
    if max_concurrency > 1:
        option("one request at a time (the server's limits.max_concurrent=1)",
               serving_estimate(shapes, compute, compute, 1, limit_gib).total_gib)
    from quantize.memory import ARTIFACT, EXPORT  # an OpenVINO artifact evaluated is one served

    parameters = shapes["parameters"]
    export = EXPORT["openvino"][0] + parameters * EXPORT["openvino"][1] / GIB
    for bits in (4, 8):
        base, per = ARTIFACT[f"openvino-{bits}"]
        option(f"WeightOnlyQuantConfig(weight_dtype='int{bits}') with backend='openvino'",
               base + parameters * per / GIB,
               f"; quantizing once needs {export:.1f} GiB, or serve an artifact quantized elsewhere "
               f"(python -m quantize)")
    return (f"Serving {model_path} ({parameters / 1e9:.2f} B parameters) in {compute} would need about "
            f"{estimate.total_gib:.1f} GiB at its peak ({render_parts(estimate)}), "
            f"and {limit_gib:.1f} GiB is available ({source}); stopped before loading the model. Change one of:\n"
            + "\n".join(lines) + f"\n(set {MEMORY_ENV} to load anyway with a figure of your own)")

