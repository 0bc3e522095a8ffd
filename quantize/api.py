"""`quantize_model`: source folder -> artifact folder named after its scheme, with a measured quantization.json.

Top to bottom: resolve the source, check the request against the model (group sizes), read the calibration
text, run the backend into a staging folder, measure quality and speed against the source, write the
metadata, rename the folder into place.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

from finetune.language_model import language_model_folder
from finetune.run_folder import TRAINING_METADATA_FILE, run_folder_of, training_metadata_file
from quantize import artifacts
from quantize.calibration import default_eval_texts, read_texts, texts_sha256
from quantize.config import QuantizeConfig
from quantize.memory import check_quantize_memory, phase_peak

logger = logging.getLogger(__name__)
FORMAT_VERSION = 1


def check_group_size(source: Path, cfg: QuantizeConfig) -> None:
    """ValueError naming the layers whose input width `cfg.group_size` does not divide."""
    if cfg.backend == "gguf" or cfg.group_size == -1:
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    bad = sorted(
        {f"{type(m).__name__}({m.in_features})" for name, m in model.named_modules()
         if isinstance(m, torch.nn.Linear) and name != "lm_head" and m.in_features % cfg.group_size}
    )
    if bad:
        raise ValueError(
            f"QuantizeConfig.group_size={cfg.group_size} does not divide the input width of layers {bad} of "
            f"{source}: pick a divisor of every width, or -1 (per channel)"
        )


def calibration_blocks(texts: list[str], tokenizer, cfg: QuantizeConfig) -> list:
    """The texts as one token stream (EOS between texts) cut into at most N blocks of calibration_seq_len."""
    import torch

    stream: list[int] = []
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for text in texts:
        stream += tokenizer(text).input_ids + sep
    size = cfg.calibration_seq_len
    blocks = [stream[i : i + size] for i in range(0, len(stream), size)]
    blocks = [b for b in blocks if len(b) == size] or [stream[:size]]
    return [torch.tensor([b]) for b in blocks[: cfg.num_calibration_samples]]


def _versions(backend: str) -> dict:
    names = {"inc": ["neural_compressor", "auto-round"], "openvino": ["openvino", "nncf", "optimum-intel"],
             "gguf": ["gguf"], "web": ["onnx", "onnxscript", "onnxruntime"]}[backend]
    out = {}
    for name in ["torch", "transformers", *names]:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def _run_backend(source: Path, cfg: QuantizeConfig, out: Path, blocks: list, tokenizer) -> None:
    if cfg.backend == "inc":
        from quantize.inc import quantize_inc

        quantize_inc(source, cfg, out, blocks)
    elif cfg.backend == "openvino":
        from quantize.openvino import quantize_openvino

        quantize_openvino(source, cfg, out, [tokenizer.decode(b[0]) for b in blocks])
    elif cfg.backend == "web":
        from quantize.web import write_web

        write_web(source, cfg, out)
    else:
        from quantize.gguf_export import write_gguf

        write_gguf(source, cfg, out)


def _check_backend_installed(cfg: QuantizeConfig) -> None:
    """Fail before any work when the backend's library is missing (the error says what to install)."""
    if cfg.backend == "inc":
        from quantize.inc import import_inc

        import_inc()
    elif cfg.backend == "openvino":
        from quantize.openvino import import_exporters

        import_exporters()
    elif cfg.backend == "web":
        from quantize.web import import_onnx

        import_onnx()
    else:
        from quantize.gguf_export import import_gguf

        import_gguf()


def _source_reference(source: Path, tokenizer, windows, prompts, cfg: QuantizeConfig, eval_texts,
                      peaks: dict, dtype: str) -> tuple:
    """The source's perplexity, greedy tokens and speed, cached per source weights and evaluation settings
    (several artifacts of one model share them)."""
    import hashlib
    import json

    import torch

    from finetune.models import cache_home
    from quantize import quality

    stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(source.glob("*.safetensors"))]
    key = json.dumps([str(source), stamp, texts_sha256(eval_texts), cfg.num_eval_prompts, cfg.eval_new_tokens,
                      torch.get_num_threads(), dtype])
    file = cache_home() / "quantize_reference" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if file.is_file():
        cached = json.loads(file.read_text())
        return cached["reference"], cached["speed"]
    with phase_peak(peaks, "reference"):
        runner = quality.load_runner(source, None, dtype=dtype)
        reference = quality.reference_outputs(runner, windows, prompts, cfg.eval_new_tokens)
        speed = quality.measure_speed(runner, tokenizer)
        del runner
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({"reference": reference, "speed": speed}))
    return reference, speed


def measure(source: Path, artifact: Path, cfg: QuantizeConfig, tokenizer, eval_texts: list[str],
            peaks: dict | None = None, reference_dtype: str = "fp32") -> dict:
    """quality (vs the source, run in `reference_dtype`, as a GGUF artifact is dequantized), speed of the artifact
    and of the source, on the same token ids; each loaded model's peak memory into `peaks` (GiB by phase:
    reference, when not cached, and artifact)."""
    peaks = {} if peaks is None else peaks
    from quantize import quality

    windows = quality.eval_ids(tokenizer, eval_texts)
    prompts = quality.prompt_ids(tokenizer, cfg.num_eval_prompts)
    reference, source_speed = _source_reference(source, tokenizer, windows, prompts, cfg, eval_texts, peaks,
                                                reference_dtype)
    with phase_peak(peaks, "artifact"):
        runner = quality.load_runner(artifact, cfg.backend, dtype=reference_dtype)
        result = quality.evaluate(runner, reference, windows, prompts, cfg.eval_new_tokens)
        speed = quality.measure_speed(runner, tokenizer)
        del runner
    runtime = {"inc": "torch eager (Neural Compressor weight-only modules)", "openvino": "optimum-intel OpenVINO",
               "gguf": f"transformers (GGUF dequantized to {reference_dtype})",
               "web": "onnxruntime (CPU, Python)"}[cfg.backend]
    return {"quality": result, "speed": {**speed, "runtime": runtime},
            "source_speed": {**source_speed, "runtime": f"transformers {reference_dtype}"}}


def _run_training_metadata(source: Path) -> Path | None:
    """The training_metadata.json of the fine-tune run whose merged/ folder `source` is; None for other sources."""
    run = run_folder_of(source)
    return training_metadata_file(run) if run is not None else None


def task_metric(source: Path, artifact: Path, cfg: QuantizeConfig) -> dict:
    """The fine-tune evaluation (finetune.evaluate) of source and artifact on cfg.task_data: headline metrics."""
    import json

    from finetune.evaluate import HEADLINE, EvalConfig, evaluate_models

    task = cfg.task
    training = _run_training_metadata(source)
    if task is None and training is not None:
        task = json.loads(training.read_text()).get("task")
    if not task:
        raise ValueError(
            f"QuantizeConfig.task is needed with task_data: the source has no {TRAINING_METADATA_FILE} task")
    eval_config = EvalConfig(task=task, data=cfg.task_data, max_examples=cfg.task_max_examples, plots=False,
                             constrained="off", output_dir=str(artifact / "task_eval"), labels=["source", "artifact"])
    results = evaluate_models([str(source), str(artifact)], eval_config)
    keys = HEADLINE.get(task, HEADLINE["default"])
    runs = {r["label"]: r["metrics"] for r in results["runs"]}
    return {"task": task, "data": cfg.task_data, "examples": results["examples"],
            "source": {k: runs["source"].get(k) for k in keys}, "artifact": {k: runs["artifact"].get(k) for k in keys}}


def quantize_model(config: QuantizeConfig | None = None, **overrides) -> Path:
    """Quantize or export a model as `config` says (or keyword arguments of QuantizeConfig); return the folder.

    Raises:
        ValueError: bad config, a group size that does not divide a layer, an already-quantized source.
        FileNotFoundError: missing model or calibration/eval file.
        ImportError: the backend is not installed (the message names the pip install).
        NotImplementedError: refused paths (SmoothQuant, static/dynamic INT8) and unsupported architectures.
    """
    cfg = dataclasses.replace(config, **overrides) if config is not None else QuantizeConfig(**overrides)
    start = time.perf_counter()
    given = artifacts.resolve_source(cfg.model, cfg.allow_download)
    source = language_model_folder(given)  # a multimodal checkpoint's language model: its exports serve text
    if source != given:
        logger.warning("%s is multimodal: quantizing its language model (%s), without the vision tower", given, source)
    _check_backend_installed(cfg)
    check_group_size(source, cfg)
    estimate = check_quantize_memory(source, cfg)
    logger.info("Memory: about %s", estimate.render())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    calibration = None
    blocks: list = []
    if cfg.calibration_file:
        texts = read_texts(cfg.calibration_file, tokenizer)
        blocks = calibration_blocks(texts, tokenizer, cfg)
        calibration = {
            "file": str(Path(cfg.calibration_file).resolve()),
            "sha256": texts_sha256(texts),
            "texts": len(texts),
            "blocks": len(blocks),
            "tokens": sum(int(b.shape[1]) for b in blocks),
        }
    eval_texts = read_texts(cfg.eval_file, tokenizer) if cfg.eval_file else default_eval_texts()
    name = cfg.name or artifacts.artifact_name(given, cfg.tag, cfg.suffix)
    output = Path(cfg.output_dir).expanduser() / name
    logger.info("Quantizing %s -> %s (%s %s)", source, output, cfg.backend, cfg.tag)
    with artifacts.staging(output) as tmp:
        peaks: dict = {}
        with phase_peak(peaks, "export"):
            _run_backend(source, cfg, tmp, blocks, tokenizer)
        seconds = round(time.perf_counter() - start, 1)
        meta = {
            "format_version": FORMAT_VERSION,
            "backend": cfg.backend,
            "scheme": cfg.scheme,
            "tag": cfg.tag,
            "bits": cfg.bits,
            "group_size": cfg.group_size,
            "sym": cfg.sym,
            "ratio": cfg.ratio,
            "all_layers": cfg.all_layers,
            "head_bits": cfg.head_bits,
            "source_model": str(source),
            **({"multimodal_source": str(given)} if source != given else {}),
            "source_weight_bytes": artifacts.weight_bytes(source),
            "calibration": calibration,
            "eval": {"file": cfg.eval_file, "sha256": texts_sha256(eval_texts)},
            "size_bytes": artifacts.folder_bytes(tmp),
            "weight_bytes": artifacts.weight_bytes(tmp),
            "quantize_seconds": seconds,
            "created_at": time.time(),
            "versions": _versions(cfg.backend),
            "config": cfg.to_dict(),
        }
        if cfg.evaluate:
            meta.update(measure(source, tmp, cfg, tokenizer, eval_texts, peaks, estimate.reference_dtype))
        meta["memory"] = {"estimate_gib": estimate.phases, "peak_gib": peaks,
                          "reference_dtype": estimate.reference_dtype}
        if cfg.task_data:
            meta["task_metric"] = task_metric(source, tmp, cfg)
        training = _run_training_metadata(source)
        if training is not None:
            meta["finetune_metadata"] = str(training)
        artifacts.write_metadata(tmp, meta)
    logger.info("Wrote %s in %.0f s", output, time.perf_counter() - start)
    return output


def remeasure(path: str | Path) -> dict:
    """Measure an existing artifact again (quality, speed) with the settings it was made with; rewrite its json.

    Use it when the first measurement ran on a busy machine: speed figures depend on what else is running.
    """
    path = Path(path)
    meta = artifacts.read_metadata(path)
    cfg = QuantizeConfig.from_dict(meta["config"])
    source = Path(meta["source_model"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    eval_texts = read_texts(cfg.eval_file, tokenizer) if cfg.eval_file else default_eval_texts()
    reference_dtype = (meta.get("memory") or {}).get("reference_dtype") or "fp32"
    meta.update(measure(source, path, cfg, tokenizer, eval_texts, reference_dtype=reference_dtype))
    meta["measured_at"] = time.time()
    artifacts.write_metadata(path, meta)
    return meta
