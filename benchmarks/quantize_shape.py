"""Quantizing at real sizes: `python -m benchmarks quantize --shape llama-3.1-8b [--only ov-int4-rtn,...]`.

Each run quantizes the shape's random weights (benchmarks.shapes; written once to disk in bf16, as real
checkpoints are stored) with quantize_model as a user runs it, evaluation included, and reports what size decides:
the time, the artifact's weight bytes, each phase's peak memory beside quantize.memory's estimate, and the
decode speed of the artifact and of the source. A run whose estimate exceeds the available memory is stopped
before loading by quantize_model itself, and its row says so. Perplexity and token agreement are left out: on
random weights they say nothing (the embedded model's quality table is `python -m benchmarks quantize`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

# name -> QuantizeConfig fields: what a user quantizes a 1-8B model to on a CPU (every run here is data-free)
SHAPE_RUNS: dict[str, dict] = {
    "ov-int8": {"backend": "openvino", "bits": 8},
    "ov-int4-rtn": {"backend": "openvino", "bits": 4, "group_size": 128},
    "inc-int4-rtn": {"backend": "inc", "bits": 4, "group_size": 128},
    "gguf-q8_0": {"backend": "gguf", "scheme": "q8_0"},
}
PHASES = ("export", "reference", "artifact")


def run_shape(shape: str, only: list[str] | None, out: Path, as_model: bool = False) -> dict:
    """Quantize shape `shape` with each of SHAPE_RUNS (or `only`); one row per run. `as_model`: each GGUF is then
    named as a model (gguf_as_model_rows)."""
    import torch

    from benchmarks.machine import machine_info
    from benchmarks.shapes import shape_folder
    from finetune.memory import InsufficientMemoryError, available_gib
    from finetune.models import random_weights_folder
    from quantize import QuantizeConfig, quantize_model, read_metadata
    from quantize.memory import estimate_quantize_memory

    unknown = sorted(set(only or ()) - set(SHAPE_RUNS))
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}; choose from {', '.join(SHAPE_RUNS)}")
    start = time.perf_counter()
    source = random_weights_folder(shape_folder(shape), torch.bfloat16)
    rows = [{"run": "write the bf16 checkpoint", "seconds": round(time.perf_counter() - start, 1)}]
    for name, fields in SHAPE_RUNS.items():
        if only and name not in only:
            continue
        # Two prompts and 8 greedy tokens: the evaluation phases load what a default run loads, at a fraction of
        # the minutes an 8B model's default evaluation takes on 2 cores.
        cfg = QuantizeConfig(model=str(source), output_dir=str(out), name=f"{shape}-{name}", num_eval_prompts=2,
                             eval_new_tokens=8, **fields)
        row = {"run": name, "available_gib": round(available_gib()[0] or 0, 1)}
        began = time.perf_counter()
        try:
            meta = read_metadata(quantize_model(cfg))
        except InsufficientMemoryError as err:
            lines = str(err).splitlines()
            fits = [line.strip().removesuffix(" (fits)") for line in lines if line.endswith("(fits)")]
            rows.append({**row, "estimate_gib": estimate_quantize_memory(source, cfg).phases, "not_started": lines[0],
                         "would_fit": fits})
            print(f"{name}: not started: {lines[0]}", flush=True)
            continue
        row.update(estimate_gib=meta["memory"]["estimate_gib"],  # the estimate quantize_model ran under
                   seconds=round(time.perf_counter() - began, 1), quantize_seconds=meta["quantize_seconds"],
                   weight_bytes=meta["weight_bytes"], peak_gib=meta["memory"]["peak_gib"],
                   reference_dtype=meta["memory"].get("reference_dtype"),
                   decode_tok_s=meta["speed"]["decode_tokens_per_s"],
                   first_token_ms=meta["speed"]["first_token_ms"],
                   source_decode_tok_s=meta["source_speed"]["decode_tokens_per_s"],
                   runtime=meta["speed"]["runtime"])
        rows.append(row)
        print(f"{name}: {row['weight_bytes'] / 1e6:.0f} MB in {row['seconds']} s, peak {row['peak_gib']} GiB "
              f"(estimate {row['estimate_gib']}), {row['decode_tok_s']} tok/s", flush=True)
        if as_model and name.startswith("gguf"):
            rows += gguf_as_model_rows(next(Path(out, cfg.name).glob("*.gguf")))
    return {"benchmark": "quantize", "shape": shape, "source": str(source), "rows": rows, "machine": machine_info()}


def gguf_as_model_rows(gguf_file: Path, steps: int = 2) -> list[dict]:
    """The GGUF named as a model, as an Ollama user brings one: converted to a model folder (finetune.gguf_weights),
    then `steps` LoRA steps of finetune_model on the demo data and the merge, each with its time and peak memory."""
    import json

    from transformers import TrainerCallback

    import finetune as ft
    from finetune.memory import peak_rss_mb, reset_peak_rss
    from finetune.models import resolve_model_path
    from quantize.memory import phase_peak

    peaks: dict = {}
    began = time.perf_counter()
    with phase_peak(peaks, "convert"):
        folder = Path(resolve_model_path(str(gguf_file)))
    converted = {"run": "the .gguf named as a model: converted", "seconds": round(time.perf_counter() - began, 2),
                 "peak_gib": peaks["convert"], "gguf_bytes": gguf_file.stat().st_size,
                 "weight_bytes": sum(f.stat().st_size for f in folder.glob("*.safetensors")),
                 "dtype": json.loads((folder / "source.json").read_text())["dtype"]}

    class TrainingPeak(TrainerCallback):  # the training's peak, then the merge's afresh
        def on_train_end(self, args, state, control, **kwargs):
            peaks["train"] = round(peak_rss_mb() / 1024, 2)
            peaks["train_ended"] = time.perf_counter()
            reset_peak_rss()

    data = Path(__file__).resolve().parents[1] / "examples" / "data" / "aurora_support.jsonl"
    with tempfile.TemporaryDirectory(dir=folder.parent) as run:
        config = ft.TextGenerationFinetuningConfig(
            ft.ModelArguments(model_name_or_path=str(gguf_file)),
            ft.DataArguments(train_file=str(data), max_seq_length=256),
            ft.TrainingArguments(output_dir=run, do_train=True, max_steps=steps, per_device_train_batch_size=2,
                                 gradient_checkpointing=True, logging_steps=1, save_steps=10_000, report_to="none",
                                 disable_tqdm=True),
            ft.FinetuningArguments(task="chat"))
        reset_peak_rss()
        began = time.perf_counter()
        result = ft.finetune_model(config, callbacks=[TrainingPeak()])
        merged = json.loads((result.merged_dir / "config.json").read_text())["dtype"]
        merged_bytes = sum(f.stat().st_size for f in result.merged_dir.glob("*.safetensors"))
    return [converted,
            {"run": f"fine-tune it: {steps} LoRA steps, batch 2, checkpointing",
             "seconds": round(peaks["train_ended"] - began, 2),
             "peak_gib": peaks["train"], "tokens_per_s": round(result.metrics["train_tokens_per_s"], 2)},
            {"run": "merge the adapter", "seconds": round(time.perf_counter() - peaks["train_ended"], 2),
             "peak_gib": round(peak_rss_mb() / 1024, 2), "dtype": merged, "weight_bytes": merged_bytes}]


def render_shape(payload: dict) -> str:
    from benchmarks.machine import cpu_label

    head = (f"Quantizing the {payload['shape']} shape (random weights, bf16 on disk) on {cpu_label(payload['machine'])}"
            f", {payload['machine'].get('threads', '?')} threads")
    lines = ["| run | seconds | weight MB | peak GiB export / reference / artifact | estimate GiB | "
             "decode tok/s (source) | first token ms |", "|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        if "not_started" in r:
            est = " / ".join(_gib(r["estimate_gib"].get(p)) for p in PHASES)
            fits = "; ".join(r.get("would_fit") or []) or "nothing listed"
            lines.append(f"| {r['run']} | not started: estimated {max(r['estimate_gib'].values()):.1f} GiB > "
                         f"{r['available_gib']} GiB available; would fit: {fits} | | | {est} | | |")
            continue
        if "peak_gib" not in r:
            lines.append(f"| {r['run']} | {r['seconds']} | | | | | |")
            continue
        if not isinstance(r["peak_gib"], dict):  # the GGUF named as a model: one phase per row
            size = f"{r['weight_bytes'] / 1e6:.0f} ({r['dtype']})" if "weight_bytes" in r else ""
            speed = f"{r['tokens_per_s']} tokens/s trained" if "tokens_per_s" in r else ""
            lines.append(f"| {r['run']} | {r['seconds']} | {size} | {r['peak_gib']:.1f} | | {speed} | |")
            continue
        peaks = " / ".join(_gib(r["peak_gib"].get(p)) for p in PHASES)
        est = " / ".join(_gib(r["estimate_gib"].get(p)) for p in PHASES)
        source = f"{r['source_decode_tok_s']} ({r['reference_dtype']})"
        lines.append(f"| {r['run']} | {r['seconds']} | {r['weight_bytes'] / 1e6:.0f} | {peaks} | {est} | "
                     f"{r['decode_tok_s']} vs {source} | {r['first_token_ms']} |")
    return head + "\n\n" + "\n".join(lines)


def _gib(value) -> str:
    return "-" if value is None else f"{value:.1f}"
