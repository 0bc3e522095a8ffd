"""The physical limits of this machine, measured now: matmul GFLOPS, memory bandwidth, and what they allow.

    python -m benchmarks.roofline
    python -m benchmarks roofline --model smollm2-135m-instruct

Every limit is in the precision this machine trains in (machine.train_precision): bf16 on a CPU with AMX or
AVX512-BF16, fp32 elsewhere (an AVX2-only CPU has no fast bf16 kernel: its bf16 matmul is timed small, for
comparison only, so the command takes about as long on every CPU).
Training limit: tokens/s at 100% of that matmul peak, 6 x parameters FLOPs per token for full fine-tuning
(forward 2P, backward 4P) and 4 x P for LoRA (no weight gradients for the frozen weights). The peak is a 4096^3
matmul; the model's own layers are smaller and slower, so the LoRA limit is also given at the model's shapes
(machine.model_shape_gflops: every linear of a layer and the lm_head, forward and grad-input, FLOP-weighted).
Decode limit: memory read bandwidth / bytes of weights read per generated token (batch 1).
AMX: one bf16 matmul runs under ONEDNN_VERBOSE=1 in a subprocess; the kernel name says whether AMX was used.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

from benchmarks.machine import (
    cpu_label,
    machine_info,
    markdown_table,
    matmul_peaks,
    memory_read_gbps,
    model_shape_gflops,
    publish,
    train_precision,
)

WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0 + 4 / 128, "int4": 0.5 + 4 / 64}  # + per-group scales

_ONEDNN_PROBE = """
import torch
a = torch.randn(256, 256, dtype=torch.bfloat16); b = torch.randn(256, 256, dtype=torch.bfloat16)
torch.ops.aten.mm(a, b)
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
    torch.nn.functional.linear(a, b)
"""


def onednn_bf16_kernel() -> str | None:
    """The oneDNN implementation that ran a bf16 matmul (e.g. 'brg_matmul:avx10_1_512_amx'), or None."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", _ONEDNN_PROBE], env=env, capture_output=True, text=True, timeout=120)
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("onednn_verbose") and ",exec," in line and ("matmul" in line or "inner_product" in line):
            match = re.search(r",(brg[^,]*|gemm[^,]*|jit[^,]*|ref[^,]*),", line)
            if match:
                return match.group(1)
    return None


def model_parameters(model: str) -> int:
    from benchmarks.train import parameter_count
    from finetune.models import resolve_model_path

    return parameter_count(resolve_model_path(model))


def measure(model: str) -> dict:
    info = machine_info()
    precision = train_precision()
    print(f"roofline of {cpu_label(info)}: matmul peaks ...", flush=True)
    gflops, sizes = matmul_peaks(n=4096, seconds=3)
    print("memory bandwidth ...", flush=True)
    bandwidth = memory_read_gbps()
    kernel = onednn_bf16_kernel()
    params = model_parameters(model)
    from finetune.models import resolve_model_path

    print(f"{precision} matmuls at the shapes of {model} ...", flush=True)
    shape_gflops = model_shape_gflops(resolve_model_path(model), precision=precision)
    peak = gflops[precision]
    return {
        "benchmark": "roofline",
        "model": model,
        "parameters": params,
        "train_precision": precision,
        "matmul_gflops": gflops,
        "matmul_size": sizes,
        "bf16_over_fp32": gflops["bf16"] / gflops["fp32"],
        "model_shape_gflops": shape_gflops,
        "memory_read_gbps": bandwidth,
        "onednn_bf16_kernel": kernel,
        "amx_in_use": bool(kernel and "amx" in kernel),
        "limits": {
            "train_lora_tokens_per_s": peak * 1e9 / (4 * params),
            "train_lora_tokens_per_s_at_model_shapes": shape_gflops * 1e9 / (4 * params),
            "train_full_tokens_per_s": peak * 1e9 / (6 * params),
            "decode_tokens_per_s": {fmt: bandwidth * 1e9 / (params * b) for fmt, b in WEIGHT_BYTES.items()},
        },
        "machine": info,
    }


def _or_dash(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)  # results written before a figure existed lack it


def render(p: dict) -> str:
    precision = p.get("train_precision", "bf16")  # results before it were all from bf16 machines
    sizes = p.get("matmul_size", {"bf16": 4096, "fp32": 4096})
    shape_gflops = p.get("model_shape_gflops", p.get("model_shape_gflops_bf16"))
    kernel = p["onednn_bf16_kernel"] or "none: no fast bf16 kernel on this CPU"
    rows = [
        {"what": f"bf16 matmul {sizes['bf16']}^3", "value": f"{p['matmul_gflops']['bf16']:.0f} GFLOPS",
         "note": f"oneDNN kernel {kernel} (AMX in use: {p['amx_in_use']})"},
        {"what": f"fp32 matmul {sizes['fp32']}^3", "value": f"{p['matmul_gflops']['fp32']:.0f} GFLOPS",
         "note": f"bf16 is {p['bf16_over_fp32']:.2g}x fp32"},
        {"what": f"{precision} matmul at the model's shapes",
         "value": _or_dash(shape_gflops, "{:.0f} GFLOPS"),
         "note": "every linear of one layer (x layers) and the lm_head, forward and grad-input, 1024 tokens, "
                 "FLOP-weighted"},
        {"what": "memory read", "value": f"{p['memory_read_gbps']:.1f} GB/s", "note": "1 GiB array, best pass"},
        {"what": "LoRA training limit", "value": f"{p['limits']['train_lora_tokens_per_s']:.0f} tok/s",
         "note": f"4 x {p['parameters'] / 1e6:.1f} M FLOPs per token at the {precision} peak"},
        {"what": "LoRA training limit at the model's shapes",
         "value": _or_dash(p["limits"].get("train_lora_tokens_per_s_at_model_shapes"), "{:.0f} tok/s"),
         "note": "the same FLOPs per token at the model-shape GFLOPS: the limit this model can approach"},
        {"what": "full fine-tune limit", "value": f"{p['limits']['train_full_tokens_per_s']:.0f} tok/s",
         "note": "6 x parameters FLOPs per token"},
    ]
    for fmt, value in p["limits"]["decode_tokens_per_s"].items():
        rows.append({"what": f"decode limit, {fmt} weights", "value": f"{value:.0f} tok/s",
                     "note": f"{WEIGHT_BYTES[fmt]:.2f} bytes per weight per token, batch 1"})
    hw = p["machine"]["hardware"]
    head = (f"roofline of {cpu_label(p['machine'])}, {hw['usable_cores']} cores, {p['machine']['threads']} threads; "
            f"model {p['model']}; training limits in {precision}")
    return head + "\n" + markdown_table(rows, [("what", "limit"), ("value", "value"), ("note", "how")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.roofline", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args(argv)
    from finetune.hardware import configure_threads

    configure_threads()
    payload = measure(args.model)
    publish("roofline", payload, render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
