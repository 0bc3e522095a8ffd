"""Inference speed of every serving path on the same model, side by side in one invocation.

    python -m benchmarks.infer                                   # all paths, batch 1 and 8, prompts 64 and 512
    python -m benchmarks.infer --paths hf-bf16,ov-int4 --batches 1 --prompts 64
    python -m benchmarks.infer --model path/to/tiny --paths hf-fp32,hf-bf16 --new-tokens 8   # what the test runs
    python -m benchmarks infer --shape llama-3.2-1b          # a real size (benchmarks.shapes): plain vs ours

Paths: hf-fp32, hf-bf16 (transformers generate), ours (the model as neural_chat_app serves it with
MixedPrecisionConfig: bf16 where the CPU has bf16 matmuls, else fp32, its linear weights reordered for oneDNN,
neural_chat_app/prepacked.py; the same generate), ov-bf16 / ov-int8 / ov-int4 (openvino-genai LLMPipeline on an
OpenVINO export; the CPU plugin computes in bf16 on AMX, so the "bf16" IR keeps fp32 weights; ov-int4 is the
README's INT4 recipe, configs/quantize_int4_awq_ov.yaml, with its perplexity cost in the table), inc-int4 (Neural
Compressor weight-only RTN INT4, eager PyTorch), llamacpp (llama-cpp-python on the model's GGUF file: the outside
reference, benchmarks/llamacpp.py: batch 1 through create_completion, larger batches through llama.cpp's
multi-sequence decoding; install it with the portable flags of the README, its default build dies with SIGILL here).
With --device cuda the hf-* paths (hf-fp16 is meant for GPUs) run on the GPU, synchronized before each clock
reading, and write the same schema for `python -m benchmarks report`.
--shape NAME runs a real architecture at its real size with random weights (speed does not depend on their
values): plain transformers generate in the machine's precision beside ours, batch 1, 32 new tokens by default.
The other paths read weights from disk, which a shape has none of.
Each path runs in its own process (its own peak RSS); every request generates exactly --new-tokens tokens; each
setting runs once untimed (the first call at a new shape pays for its set-up), then --repeats times, and the median
run is reported.
Reported per path, batch and prompt length: first-token latency, decode tokens/s (all sequences of the batch),
p50/p99 per-token latency, peak RSS, and decode speed as a fraction of the memory-bandwidth limit (the weights read
once per step for the whole batch).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import (
    REPO,
    cpu_label,
    energy_joules,
    machine_info,
    markdown_table,
    memory_read_gbps,
    peak_rss_mb,
    publish,
)

PATHS = ("hf-fp32", "hf-bf16", "hf-fp16", "ours", "ov-bf16", "ov-int8", "ov-int4", "inc-int4", "llamacpp")
_WEIGHT_BYTES = {"hf-fp32": 4.0, "hf-bf16": 2.0, "hf-fp16": 2.0, "ov-bf16": 2.0, "ov-int8": 1.03, "ov-int4": 0.56,
                 "inc-int4": 0.56, "llamacpp": 0.63}  # bytes per weight read per token (Q4_1: 5 bits + scales)
_TEXT = ("Intel Xeon processors with Advanced Matrix Extensions run bfloat16 matrix multiplications in tiles, "
         "which makes small language models fast enough to serve a chatbot from a CPU. ")


def prompt_of(tokenizer, n_tokens: int, variant: int = 0) -> str:
    """About n_tokens of text; each `variant` starts with a different word, so that an engine that caches
    prompt prefixes (llama.cpp, openvino-genai) cannot reuse an earlier run's prefill."""
    ids = tokenizer(f"Note {variant}: " + _TEXT * (n_tokens // 8 + 2), add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[:n_tokens])


def _percentiles(gaps_ms: list[float]) -> tuple[float | None, float | None]:
    if not gaps_ms:
        return None, None
    q = statistics.quantiles(gaps_ms, n=100, method="inclusive") if len(gaps_ms) > 1 else gaps_ms * 99
    return q[49], q[98]


def _result(ttft_s: float, total_s: float, batch: int, new_tokens: int, gaps_ms: list[float],
            input_tokens: int) -> dict:
    """`input_tokens`: what the engine itself counted in one prompt, so every path is seen to prefill the same."""
    p50, p99 = _percentiles(gaps_ms)
    decode_s = max(total_s - ttft_s, 1e-9)
    return {"ttft_ms": ttft_s * 1000, "decode_tokens_per_s": batch * (new_tokens - 1) / decode_s,
            "p50_token_ms": p50, "p99_token_ms": p99, "total_s": total_s, "tokens_per_joule": None,
            "input_tokens": input_tokens}


# --- the paths ------------------------------------------------------------------------------------------------

def _hf_runner(model_path: str, dtype_name: str, tokenizer, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    from finetune.models import RANDOM_WEIGHTS_FILE, load_model

    dtype = getattr(torch, dtype_name)
    if (Path(model_path) / RANDOM_WEIGHTS_FILE).is_file():  # a --shape: built in that dtype, not read
        model = load_model(model_path, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    return _generate_with(model.eval().to(device), tokenizer, device)


def _ours_runner(model_path: str, tokenizer, device: str):
    """The model as build_chatbot(PipelineConfig(optimization_config=MixedPrecisionConfig())) loads it, timed in
    the same generate as the hf-* paths; its weight bytes (the reordered ones included) for the bandwidth limit."""
    from neural_chat_app import MixedPrecisionConfig, PipelineConfig
    from neural_chat_app.loading import compute_line, load_backend

    backend = load_backend(PipelineConfig(model_name_or_path=model_path, device=device,
                                          optimization_config=MixedPrecisionConfig()))
    loaded = {"weight_bytes": backend.weight_bytes, "dtype": backend.dtype, "compute": compute_line(backend)}
    run = _generate_with(backend.model, tokenizer, device)
    return lambda prompts, new_tokens: {**run(prompts, new_tokens), **loaded}


INT4_RECIPE = REPO / "configs" / "quantize_int4_awq_ov.yaml"


def _int4_artifact(model_path: str) -> Path:
    """Our INT4 path: the README's recipe (configs/quantize_int4_awq_ov.yaml: AWQ + scale estimation on local chat
    data, symmetric, group 32, embeddings in INT4 too), built once with quantize_model into the benchmark cache.
    Its quantization.json holds the perplexity measured against the source, reported beside the speed."""
    from finetune.models import cache_home
    from quantize import QuantizeConfig, quantize_model

    recipe = QuantizeConfig.from_yaml(INT4_RECIPE)
    calibration = Path(recipe.calibration_file)
    name = f"{Path(model_path).name}-ov-int4-{recipe.scheme}-g{recipe.group_size}-{'sym' if recipe.sym else 'asym'}"
    target = cache_home() / "benchmarks" / name
    if not (target / "openvino_model.xml").is_file():
        quantize_model(recipe, model=model_path, output_dir=str(target.parent), name=name,
                       calibration_file=str(calibration if calibration.is_absolute() else REPO / calibration))
    return target


def _ov_folder(model_path: str, weight_format: str) -> Path:
    from finetune.models import cache_home
    from quantize.openvino import export_openvino

    if weight_format == "int4":
        return _int4_artifact(model_path)
    target = cache_home() / "benchmarks" / f"{Path(model_path).name}-ov-{weight_format}"
    if not (target / "openvino_model.xml").is_file():
        export_openvino(model_path, target, weight_format)
    return target


def _ov_runner(model_path: str, weight_format: str, threads: int):
    import openvino_genai as ov_genai

    folder = _ov_folder(model_path, "fp32" if weight_format == "bf16" else weight_format)
    pipe = ov_genai.LLMPipeline(str(folder), "CPU", INFERENCE_NUM_THREADS=threads)

    def run(prompts: list[str], new_tokens: int) -> dict:
        config = ov_genai.GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, ignore_eos=True)
        # generate() wraps a string in the model's chat template by default (SmolLM2's adds a 30-token system
        # prompt): the other paths prefill the prompt as it is.
        config.apply_chat_template = False
        start = time.perf_counter()
        result = pipe.generate(prompts, config)  # a list, so the result carries perf_metrics
        end = time.perf_counter()
        metrics = result.perf_metrics
        gaps = [d / 1000 for d in metrics.raw_metrics.m_durations]  # microseconds per generation step
        return _result(metrics.get_ttft().mean / 1000, end - start, len(prompts), new_tokens, gaps,
                       metrics.get_num_input_tokens())

    return run


def _inc_runner(model_path: str, tokenizer):
    import torch
    from neural_compressor.torch.quantization import RTNConfig, convert, prepare
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    model = convert(prepare(model, RTNConfig(bits=4, group_size=64, use_sym=False)))
    return _generate_with(model, tokenizer)


def _generate_with(model, tokenizer, device: str = "cpu"):
    """transformers generate, timed by a logits processor: it runs once per generated token, right after the
    forward pass that produced that token's logits, for any batch size."""
    import torch
    from transformers import LogitsProcessorList

    def run(prompts: list[str], new_tokens: int) -> dict:
        times: list[float] = []

        def clock(input_ids, scores):
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            return scores

        tokenizer.padding_side = "left"
        batch = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           logits_processor=LogitsProcessorList([clock]), pad_token_id=tokenizer.pad_token_id)
        end = time.perf_counter()
        gaps = [(b - a) * 1000 for a, b in zip(times, times[1:])]
        return _result(times[0] - start, end - start, len(prompts), new_tokens, gaps, batch["input_ids"].shape[1])

    return run


def _llamacpp_runner(model: str, threads: int):
    from benchmarks import llamacpp
    from finetune.models import EMBEDDED_MODELS, embedded_gguf_path

    llamacpp.require()  # a missing install is the first thing to say
    if model not in EMBEDDED_MODELS:
        raise ValueError("the llamacpp path runs the embedded model's GGUF file only")
    llm = llamacpp.load(str(embedded_gguf_path(EMBEDDED_MODELS[model])), threads)

    def run(prompts: list[str], new_tokens: int) -> dict:
        if len(prompts) == 1:
            times, input_tokens = llamacpp.generate_one(llm, prompts[0], new_tokens)
        else:
            times = llamacpp.generate_batch(llm, prompts, new_tokens, threads)[1]
            input_tokens = len(llm.tokenize(prompts[0].encode("utf-8"), special=True))
        gaps = [(b - a) * 1000 for a, b in zip(times[1:], times[2:])]
        return _result(times[1] - times[0], times[-1] - times[0], len(prompts), len(times) - 1, gaps, input_tokens)

    return run


def _runner(path: str, model: str, threads: int, device: str):
    from finetune.models import load_tokenizer, resolve_model_path

    model_path = resolve_model_path(model)
    tokenizer = load_tokenizer(model_path)
    if path.startswith("hf-"):
        dtype = {"hf-fp32": "float32", "hf-bf16": "bfloat16", "hf-fp16": "float16"}[path]
        return _hf_runner(model_path, dtype, tokenizer, device), tokenizer
    if path == "ours":
        return _ours_runner(model_path, tokenizer, device), tokenizer
    if device != "cpu":
        raise ValueError(f"{path} is a CPU path; on {device} run the hf-* paths")
    if path.startswith("ov-"):
        return _ov_runner(model_path, path[3:], threads), tokenizer
    if path == "inc-int4":
        return _inc_runner(model_path, tokenizer), tokenizer
    return _llamacpp_runner(model, threads), tokenizer


def run_path(path: str, args) -> list[dict]:
    from finetune.hardware import configure_threads

    threads = configure_threads()
    runner, tokenizer = _runner(path, args.model, threads, args.device)
    rows = []
    runner([prompt_of(tokenizer, 16, variant=-1)], 4)  # warm-up: compile, allocate, first-call costs
    variant = 0
    for prompt_len in args.prompts:
        for batch in args.batches:
            try:
                # The first call at a new shape pays for kernel selection and buffer growth (first token 3x
                # slower here): an untimed call takes it, so the median below picks among like runs.
                variant += 1
                runner([prompt_of(tokenizer, prompt_len, variant)] * batch, 2)
                runs = []
                for _ in range(args.repeats):
                    variant += 1  # a prompt no earlier run has seen
                    before = energy_joules(args.device)
                    result = runner([prompt_of(tokenizer, prompt_len, variant)] * batch, args.new_tokens)
                    after = energy_joules(args.device)
                    if before is not None and after is not None and after > before:
                        result["tokens_per_joule"] = batch * args.new_tokens / (after - before)
                    runs.append(result)
                result = sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2]  # the median run
                result["repeats"] = len(runs)
            except ValueError as e:
                result = {"skipped": str(e)}
            rows.append({"path": path, "device": args.device, "batch": batch, "prompt_tokens": prompt_len, **result})
    rss = peak_rss_mb()
    for row in rows:
        row["peak_rss_mb"] = round(rss)
    if path == "ov-int4":  # what the speed costs: perplexity against the source, measured by quantize_model
        from finetune.models import resolve_model_path
        from quantize import read_metadata

        quality = read_metadata(_int4_artifact(resolve_model_path(args.model))).get("quality") or {}
        for row in rows:
            row["perplexity_vs_source_pct"] = quality.get("perplexity_delta_pct")
    return rows


# --- the driver ---------------------------------------------------------------------------------------------

def run(args) -> dict:
    from benchmarks.roofline import model_parameters

    info = machine_info()
    bandwidth = memory_read_gbps()
    params = model_parameters(args.model)
    rows, errors = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.paths:
            out = Path(tmp) / f"{path}.json"
            cmd = [sys.executable, "-m", "benchmarks.infer", "--worker", path, "--out", str(out), *_passthrough(args)]
            print(f"-- {path}", flush=True)
            proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                errors[path] = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                print(f"   {path}: {errors[path]}", flush=True)
                continue
            rows += json.loads(out.read_text())
    for row in rows:
        # Every decode step reads the weights once for all sequences of the batch. Weights only: the KV cache read
        # beside them (small at batch 1, not at batch 8 with long prompts) puts the real ceiling lower still.
        weights = row.get("weight_bytes") or params * _WEIGHT_BYTES[row["path"]]  # ours: what it loaded
        limit = row["batch"] * bandwidth * 1e9 / weights
        row["decode_limit_tokens_per_s"] = limit
        if "decode_tokens_per_s" in row:
            row["fraction_of_decode_limit"] = row["decode_tokens_per_s"] / limit
    return {"benchmark": "infer", "device": args.device, "model": args.shape or args.model,
            "shape": args.shape, "new_tokens": args.new_tokens,
            "parameters": params, "memory_read_gbps": bandwidth, "machine": info, "results": rows, "errors": errors}


def _passthrough(args) -> list[str]:
    return ["--device", args.device, "--model", args.model, "--paths", ",".join(args.paths),
            "--new-tokens", str(args.new_tokens), "--batches", ",".join(map(str, args.batches)),
            "--prompts", ",".join(map(str, args.prompts)),
            "--repeats", str(args.repeats)]


def render(payload: dict) -> str:
    hw = payload["machine"]["hardware"]
    head = (f"model={payload['model']} new tokens={payload['new_tokens']} | {cpu_label(payload['machine'])}, "
            f"{hw['usable_cores']} "
            f"cores | memory read {payload['memory_read_gbps']:.1f} GB/s")
    columns = [("path", "path"), ("batch", "batch"), ("prompt_tokens", "prompt"), ("ttft_ms", "first token ms"),
               ("decode_tokens_per_s", "decode tok/s"), ("p50_token_ms", "p50 ms/token"),
               ("p99_token_ms", "p99 ms/token"), ("fraction_of_decode_limit", "of bandwidth limit"),
               ("peak_rss_mb", "peak RSS MB"), ("perplexity_vs_source_pct", "perplexity vs source %")]
    table = markdown_table(payload["results"], columns)
    computes = {r["path"]: r["compute"] for r in payload["results"] if r.get("compute")}
    table += "".join(f"\n\n{path}: {line}" for path, line in computes.items())
    if payload["errors"]:
        table += "\n\nnot measured: " + "; ".join(f"{k}: {v}" for k, v in payload["errors"].items())
    return head + "\n" + table


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.infer", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--shape", help="a real architecture and size with random weights (benchmarks.shapes)")
    p.add_argument("--paths", help="default: every path but hf-fp16; with --shape, plain in the machine's "
                   "precision and ours")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batches", type=_ints, help="default 1,8; with --shape 1")
    p.add_argument("--prompts", type=_ints, default=[64, 512])
    p.add_argument("--new-tokens", type=int, help="default 128; with --shape 32")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting; the median run is reported")
    p.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    _defaults(args)
    if args.worker:
        args.out.write_text(json.dumps(run_path(args.worker, args)))
        return 0
    payload = run(args)
    name = "infer" + (f"-{args.shape}" if args.shape else "") + ("" if args.device == "cpu" else f"-{args.device}")
    publish(name, payload, render(payload))
    return 0


def _defaults(args) -> None:
    """Fill what the command line left open; with --shape, point --model at the shape's folder."""
    from benchmarks.machine import serve_precision

    if args.shape:
        from benchmarks.shapes import shape_folder

        args.model = str(shape_folder(args.shape))
        plain = "hf-bf16" if args.device == "cuda" or serve_precision() == "bf16" else "hf-fp32"
        args.paths = args.paths or f"{plain},ours"
    args.paths = args.paths if isinstance(args.paths, list) else (
        args.paths or ",".join(x for x in PATHS if x != "hf-fp16")).split(",")
    args.batches = args.batches or ([1] if args.shape else [1, 8])
    args.new_tokens = args.new_tokens or (32 if args.shape else 128)
    unknown = [x for x in args.paths if x not in PATHS]
    if unknown:
        raise SystemExit(f"unknown path(s) {unknown}; choose from {', '.join(PATHS)}")
    on_disk = [x for x in args.paths if x not in ("hf-fp32", "hf-bf16", "hf-fp16", "ours")]
    if args.shape and on_disk:
        raise SystemExit(f"--shape runs the hf-* and ours paths only: {', '.join(on_disk)} read the model's weights "
                         f"from disk, and a shape has none (export a real model and pass --model)")


if __name__ == "__main__":
    sys.exit(main())
