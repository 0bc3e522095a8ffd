"""The comparison run behind finetune.evaluate: score models on the same examples, write the report, merge runs."""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from finetune.evaluate.data import EvalError, Example, examples_from_records, load_examples, with_few_shot

logger = logging.getLogger(__name__)

HEADLINE = {
    "extraction": ["json_validity", "schema_validity", "attribute_f1", "aspect_f1", "aspect_sentiment_accuracy",
                   "overall_sentiment_accuracy", "extraction_exact_match"],
    "default": ["bleu", "chrf", "rougeL", "exact_match", "tool_call_exact", "tool_name_accuracy", "false_call_rate"],
}


@dataclass
class EvalConfig:
    """What to evaluate on and how to generate; the same for every model compared."""

    task: str = "extraction"
    """What the records hold and which metrics score them: completion, chat, summarization, code-generation,
    extraction, or dpo/kto (held-out preferences: reward accuracy and margin against the first model)."""
    data: str | None = None
    """A .json, .jsonl or .csv file of held-out records."""
    max_examples: int | None = 200
    """Score at most this many examples (null: all of them)."""
    max_new_tokens: int = 256
    """Greedy tokens generated per example."""
    batch_size: int = 16
    """Examples generated at once."""
    constrained: Literal["off", "on", "both"] = "both"
    """Extraction only: decode under the JSON schema (on), not (off), or report both."""
    few_shot: int = 0
    """Extraction: worked examples before the question, for every model."""
    base_few_shot: int | None = None
    """Extraction: worked examples for the first model (the baseline) only; a base model needs some."""
    schema: str | None = None
    """JSON Schema file for extraction; default: finetune/schemas/extraction.schema.json."""
    matching: Literal["exact", "lenient"] = "exact"
    """Extraction: when a predicted value or aspect names the gold one: exact (equal once normalized) or lenient
    (half the words of the longer phrase, up to word endings; finetune/extraction/matching.py)."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Weights and activations of transformers models; auto: bfloat16 where the CPU has AMX/AVX512-BF16."""
    perplexity: bool = True
    """Also measure the perplexity of the references."""
    output_dir: str | None = None
    """Report folder; default: <last model>/eval."""
    labels: list[str] | None = None
    """Names of the models in the report, in their order."""
    plots: bool = True
    """Draw the PNG plots next to the report."""
    allow_download: bool = False
    """A hub id that is not in the Hugging Face cache is downloaded into it (else an error says how)."""
    trust_remote_code: bool = False
    """Run the code a model's folder ships (models with an auto_map)."""

    def __post_init__(self):
        from finetune.config import TASKS
        from finetune.config_binding import check_choice

        check_choice("EvalConfig.task", self.task, TASKS)
        check_choice("EvalConfig.constrained", self.constrained, ("off", "on", "both"))
        check_choice("EvalConfig.dtype", self.dtype, ("auto", "bfloat16", "float32"))
        check_choice("EvalConfig.matching", self.matching, ("exact", "lenient"))
        for name in ("max_new_tokens", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"EvalConfig.max_examples must be positive or None, got {self.max_examples!r}")
        if self.task != "extraction" and self.constrained == "on":
            raise ValueError("EvalConfig.constrained='on' needs task='extraction' (the JSON schema)")


@dataclass
class RunResult:
    label: str
    model: str
    backend: str
    constrained: bool
    few_shot: int
    metrics: dict
    seconds: float
    samples: list[dict] = field(default_factory=list)


def _variants(config: EvalConfig) -> list[bool]:
    if config.task != "extraction":
        return [False]
    return {"off": [False], "on": [True], "both": [False, True]}[config.constrained]


def _check_task(spec, task: str) -> None:
    # DPO/KTO on conversations leaves a chat model: its chat metrics are the regression check of preference tuning
    if spec.task and spec.task != task and not (spec.task in ("dpo", "kto") and task == "chat"):
        raise EvalError(
            f"{spec.label} was fine-tuned for task={spec.task!r} ({spec.metadata_file}), but the eval data is "
            f"task={task!r}: evaluating it there measures nothing it was trained for. Evaluate it on "
            f"{spec.task} data, or pass a model fine-tuned for {task}."
        )


def evaluate_models(models: list[str], config: EvalConfig, examples: list[Example] | None = None) -> dict:
    """Score each model on the same examples; write report.md, results JSON and plots; return the results."""
    from finetune.evaluate.generation import load_engine, prompt_ids, resolve_model
    from finetune.evaluate.metrics import extraction_metrics, text_metrics, tool_call_metrics

    if not models:
        raise EvalError("No model to evaluate: pass at least one model (the first is the baseline).")
    from finetune.config import PREFERENCE_TASKS

    if config.task in PREFERENCE_TASKS:  # replies are scored, not generated
        from finetune.evaluate.preference import evaluate_preferences

        return evaluate_preferences(models, config)
    if examples is None:
        if not config.data:
            raise EvalError("No eval data: set EvalConfig.data (CLI: --data) to a file of held-out records.")
        examples = load_examples(config.data, config.task, config.max_examples)
    elif not examples:
        raise EvalError("The eval set is empty: nothing to score.")
    from finetune.extras import require

    # before any model loads: a missing scorer would otherwise fail after all the generation
    for module in ("jsonschema",) if config.task == "extraction" else ("sacrebleu", "rouge_score"):
        require(module, f"Scoring task={config.task!r}")
    schema = None
    if config.task == "extraction":
        from finetune.extraction import load_schema

        schema = load_schema(config.schema)
    labels = config.labels or []
    specs = [dataclasses.replace(resolve_model(m, labels[i] if i < len(labels) else None, config.allow_download),
                                 trust_remote_code=config.trust_remote_code) for i, m in enumerate(models)]
    for spec in specs:
        _check_task(spec, config.task)
    references = [e.reference for e in examples]
    uses_tools = any(e.uses_tools for e in examples)  # replies are read for calls, as serving reads them
    runs: list[RunResult] = []
    replies: list[dict] = []  # every reply of every run, written beside the report (the report keeps five)
    count_tokens = None
    for i, spec in enumerate(specs):
        few_shot = config.base_few_shot if (i == 0 and config.base_few_shot is not None) else config.few_shot
        logger.info("Evaluating %s (%s) on %d examples", spec.label, spec.path, len(examples))
        engine = load_engine(spec, config.dtype)
        try:
            if count_tokens is None:  # one tokenizer counts tokens for every model, so the figures compare
                count_tokens = _token_counter(engine.tokenizer)
            ppl = engine.perplexity(examples, config.task) if config.perplexity else None
            prompts = [prompt_ids(engine.tokenizer, e, with_few_shot(e.messages, few_shot) if e.messages else None)
                       for e in examples]
            for constrained in _variants(config):
                started = time.perf_counter()
                desc = f"{spec.label}{' +schema' if constrained else ''}"
                outputs = engine.generate(prompts, config.max_new_tokens, config.batch_size,
                                          schema if constrained else None, desc=desc, raw=uses_tools)
                seconds = time.perf_counter() - started
                tool_metrics = tool_call_metrics(outputs, examples) if uses_tools else {}
                written = [{"written": o} if uses_tools else {} for o in outputs]  # with its calls, as generated
                if uses_tools:  # the words of a reply are what comes before its calls
                    outputs = [_content(o, e) for o, e in zip(outputs, examples)]
                metrics = {"perplexity": ppl, **text_metrics(outputs, references, count_tokens), **tool_metrics}
                if config.task == "extraction":
                    metrics.update(extraction_metrics(outputs, references, schema, config.matching))
                metrics["examples"] = len(examples)
                metrics["generation_seconds"] = round(seconds, 2)
                metrics["examples_per_s"] = round(len(examples) / seconds, 3) if seconds else None
                samples = [{"where": e.where, "reference": e.reference, "output": o, **w}
                           for e, o, w in list(zip(examples, outputs, written))[:5]]
                run_label = f"{spec.label} ({'constrained' if constrained else 'free'})" if config.task == \
                    "extraction" else spec.label
                runs.append(RunResult(run_label, spec.label, engine.kind, constrained, few_shot, metrics,
                                      round(seconds, 2), samples))
                replies += [{"run": run_label, "where": e.where, "reference": e.reference, "output": o, **w}
                            for e, o, w in zip(examples, outputs, written)]
                logger.info("%s: %s", run_label, _headline_text(metrics, config.task))
        finally:
            engine.close()
    results = _results(specs, runs, config, examples)
    out_dir = Path(config.output_dir) if config.output_dir else _default_output(specs)
    from finetune.evaluate.report import write_report

    write_report(results, out_dir, specs, plots=config.plots, replies=replies)
    results["output_dir"] = str(out_dir)
    return results


def _content(reply: str, example: Example) -> str:
    from finetune.tool_call_formats import parse_tool_calls

    content, calls = parse_tool_calls(reply, example.offered)
    return (content or "") if calls else reply


def _token_counter(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _default_output(specs) -> Path:
    last = Path(specs[-1].path)
    if specs[-1].metadata_file:
        return Path(specs[-1].metadata_file).parent / "eval"
    if last.is_dir() and not str(last.resolve()).startswith(str(Path.home() / ".cache")):
        return last / "eval"
    return Path("eval_reports") / time.strftime("%Y%m%d-%H%M%S")


def _headline_text(metrics: dict, task: str) -> str:
    keys = HEADLINE["extraction" if task == "extraction" else "default"]
    return ", ".join(f"{k}={metrics[k]:.1f}" for k in keys if metrics.get(k) is not None)


def _results(specs, runs: list[RunResult], config: EvalConfig, examples: list[Example]) -> dict:
    from finetune.hardware import detect_hardware

    hardware = detect_hardware()
    results = {
        "task": config.task,
        "data": config.data,
        "examples": len(examples),
        "config": asdict(config),
        "models": [asdict(s) for s in specs],
        "runs": [asdict(r) for r in runs],
        "machine": {"cpu": hardware.cpu_model or platform.processor(), "hardware": hardware.as_dict(),
                    "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _add_deltas(results)
    return results


def _add_deltas(results: dict) -> None:
    """Each run's change against the first model's run with the same decoding (free or constrained)."""
    first = results["models"][0]["label"]
    baseline = {r["constrained"]: r for r in results["runs"] if r["model"] == first}
    for r in results["runs"]:
        base = baseline.get(r["constrained"])
        r["metrics"].pop("delta_vs_base", None)
        if base is not None and base is not r:
            r["metrics"]["delta_vs_base"] = {
                k: round(v - base["metrics"][k], 2) for k, v in r["metrics"].items()
                if isinstance(v, (int, float)) and isinstance(base["metrics"].get(k), (int, float))
                and k not in ("examples", "generation_seconds", "examples_per_s")
            }


SAME_SETTINGS = ("task", "examples")
SAME_CONFIG = ("max_examples", "max_new_tokens", "constrained", "schema", "dtype")


def merge_results(first: dict, second: dict) -> dict:
    """Join two evaluations of different models on the same examples and settings (e.g. a base model scored
    once and reused for several fine-tuned runs); the first one's first model stays the baseline."""
    for key in SAME_SETTINGS:
        if first[key] != second[key]:
            raise EvalError(f"Cannot merge evaluations with different {key}: {first[key]!r} vs {second[key]!r}")
    for key in SAME_CONFIG:
        if first["config"].get(key) != second["config"].get(key):
            raise EvalError(f"Cannot merge evaluations with different {key}: {first['config'].get(key)!r} vs "
                            f"{second['config'].get(key)!r}")
    if Path(str(first["data"])).resolve() != Path(str(second["data"])).resolve():
        raise EvalError(f"Cannot merge evaluations of different data: {first['data']} vs {second['data']}")
    merged = {**second, "models": first["models"] + second["models"], "runs": first["runs"] + second["runs"]}
    _add_deltas(merged)
    return merged


def evaluate_after_training(output_dir: str | Path, config, eval_config: EvalConfig | None = None) -> dict | None:
    """Compare the base model with the model just written to `output_dir`, on the run's held-out records.

    `config` is the run's TextGenerationFinetuningConfig. The eval records are its validation_file, or the same
    split of train_file that training held out. Extraction runs give the base model the few-shot examples (it
    has never seen the format) and score with and without constrained decoding. Returns None when the run has
    no held-out data.
    """
    from finetune.config import PREFERENCE_TASKS
    from finetune.dataset import load_records

    data_args, task = config.data_args, config.finetune_args.task
    _, records, _ = load_records(data_args, task, need_eval=True)
    if not records:
        logger.warning("No held-out records (set validation_file or validation_split_percentage): skipping the "
                       "base-vs-tuned evaluation")
        return None
    eval_config = eval_config or EvalConfig(
        task=task, max_examples=data_args.max_eval_samples or 200,
        base_few_shot=3 if task == "extraction" else None, output_dir=str(Path(output_dir) / "eval"),
        labels=["base", "fine-tuned"])
    source = data_args.validation_file or data_args.train_file or data_args.dataset_name
    base = config.model_args.model_name_or_path or "smollm2-135m-instruct"
    if task in PREFERENCE_TASKS:
        from finetune.evaluate.preference import evaluate_preferences

        eval_config.data = eval_config.data or str(source)
        results = evaluate_preferences([base, str(output_dir)], eval_config, records, data_args.max_seq_length or 1024)
        print(summary_table(results))
        return results
    examples = examples_from_records(records, task, str(source), eval_config.max_examples)
    eval_config.data = eval_config.data or str(source)
    results = evaluate_models([base, str(output_dir)], eval_config, examples)
    print(summary_table(results))
    return results


def summary_table(results: dict) -> str:
    """A plain-text table of the headline metrics of every run (what the CLI prints)."""
    from finetune.evaluate.report import headline_rows

    rows = headline_rows(results)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
