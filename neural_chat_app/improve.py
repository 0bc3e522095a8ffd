"""The whole loop in one command: logged conversations -> data pipeline -> fine-tune -> evaluate against the
current model -> promote only if better -> quantize for serving.

    python -m neural_chat_app improve --config configs/improve.yaml

Every step writes into its own folder of the run folder and is recorded in `state.json` once it has finished,
so a run killed at any step, started again with the same command, skips the finished steps and redoes only the
interrupted one (fine-tuning itself resumes from its last checkpoint). The promoted model is recorded in
`<models_dir>/promoted.json`; the server and `build_chatbot` pick it up by that file's `model` path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from finetune.config import TextGenerationFinetuningConfig
from finetune.config_binding import RAW_MAPPING, ConfigError, bind, load_config
from quantize.config import QuantizeConfig

logger = logging.getLogger(__name__)

STEPS = ("collect", "prepare", "finetune", "evaluate", "promote", "quantize")
LOWER_IS_BETTER = {"perplexity"}
# Fine-tuning fields each run sets itself, and the loop field that decides them instead.
LOOP_OWNED = {"model_name_or_path": "base_model", "train_file": "chat_log or data_dir (the loop prepares the data)",
              "validation_file": "chat_log or data_dir (the loop prepares the data)",
              "output_dir": "run_dir (the model is written to <run_dir>/model)"}


@dataclass
class LoopConfig:
    """One improvement cycle. The YAML is read by the config binder: an unknown key or a wrong type, in the loop's
    keys or in its finetune / quantize sections, is an error that names it when the config is loaded."""

    run_dir: str = "runs/improve"
    """Where every step's output, report and state.json go."""
    chat_log: str | None = None
    """The server's SQLite conversation log; conversations logged since the last promoted run are used."""
    data_dir: str | None = None
    """Or a folder (or file) of conversation logs in any format the data pipeline reads."""
    min_feedback: int | None = 1
    """chat_log only: keep conversations rated at least this (1: thumbs up only; None: every conversation)."""
    metadata_filters: list[str] = field(default_factory=list)
    """Data pipeline metadata predicates, e.g. 'metadata.model == "smollm2-135m-instruct"'."""
    min_conversations: int = 20
    """Fewer conversations than this after filtering: stop with a message instead of training."""
    base_model: str | None = None
    """The model to improve; default: the promoted one, else the embedded default."""
    models_dir: str | None = None
    """Where promoted.json lives; default: the server's models folder (~/.cache/neuralchat-xeon/models)."""
    finetune: TextGenerationFinetuningConfig = field(default_factory=dict, metadata=RAW_MAPPING)
    """Fields of the four fine-tuning dataclasses, flat as in a `python -m finetune` YAML (lora_rank,
    learning_rate, max_steps, ...); the loop sets the model, the data and the output folder."""
    metric: str = "perplexity"
    """What decides promotion, from finetune.evaluate (perplexity is lower-better; bleu, chrf, rougeL, ... higher)."""
    min_improvement: float = 0.0
    """The candidate must beat the current model by more than this (in the metric's units)."""
    eval_examples: int = 50
    """Held-out conversations both models are scored on."""
    quantize: QuantizeConfig | None = field(
        default_factory=lambda: QuantizeConfig(backend="openvino", scheme="rtn", bits=8))
    """QuantizeConfig fields for the promoted model's serving artifact (its model and output_dir are the loop's);
    null to skip."""
    seed: int = 42
    """Seeds the data split and the fine-tuning run."""
    task: Literal["chat"] = "chat"
    """The fine-tuning task of logged conversations."""

    def __post_init__(self):
        if (self.chat_log is None) == (self.data_dir is None):
            raise ValueError("LoopConfig: set exactly one of chat_log (the server's SQLite log) or data_dir")
        if self.min_feedback not in (None, -1, 1):
            raise ValueError(f"LoopConfig.min_feedback must be 1, -1 or null, got {self.min_feedback!r}")
        if isinstance(self.finetune, Mapping):
            self.finetune = self._finetune_config(self.finetune)
        if isinstance(self.quantize, Mapping):
            self.quantize = bind(QuantizeConfig, self.quantize, "quantize")

    def _finetune_config(self, values: Mapping[str, Any]) -> TextGenerationFinetuningConfig:
        owned = sorted(set(values) & set(LOOP_OWNED))
        if owned:
            raise ConfigError(f"finetune.{owned[0]} is set by the loop for each run: use {LOOP_OWNED[owned[0]]}")
        defaults = {"task": self.task, "seed": self.seed, "report_to": "none", "do_train": True, "do_eval": True,
                    "generation_eval": False}  # the evaluate step compares against the current model instead
        return TextGenerationFinetuningConfig.from_dict({**defaults, **values}, "finetune")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Iterable = ()) -> LoopConfig:
        """The file's keys, then `key=value` overrides (`finetune.learning_rate=1e-4`)."""
        return load_config(cls, path, overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for state.json: the loop's keys, the four fine-tuning sections, the quantize fields."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("finetune", "quantize")}
        ft = self.finetune
        out["finetune"] = {"model_args": asdict(ft.model_args), "data_args": asdict(ft.data_args),
                           "training_args": ft.training_args.to_dict(), "finetune_args": asdict(ft.finetune_args)}
        out["quantize"] = self.quantize.to_dict() if self.quantize else None
        return out


# --- state and the promoted model ------------------------------------------------------------------------------

def _models_dir(config: LoopConfig) -> Path:
    from finetune.home import cache_home

    return Path(config.models_dir).expanduser() if config.models_dir else cache_home() / "models"


def promoted(models_dir: Path) -> dict | None:
    path = models_dir / "promoted.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)  # atomic: a kill never leaves half a state file


class _State:
    def __init__(self, run_dir: Path):
        self.path = run_dir / "state.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"steps": {}}

    def done(self, step: str) -> dict | None:
        return self.data["steps"].get(step)

    def finish(self, step: str, result: dict) -> dict:
        self.data["steps"][step] = {**result, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_json(self.path, self.data)
        return self.data["steps"][step]


# --- the steps ------------------------------------------------------------------------------------------------

def _collect(config: LoopConfig, out: Path, since: float | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    if config.chat_log:
        from neural_chat_app.export_log import export_jsonl

        counts = export_jsonl(config.chat_log, out / "conversations.jsonl", min_feedback=config.min_feedback,
                              since=since)
        return {"input": str(out / "conversations.jsonl"), **counts}
    return {"input": str(Path(config.data_dir).resolve())}


def _prepare(config: LoopConfig, collected: dict, out: Path, tokenizer: str) -> dict:
    from finetune.data import prepare_dataset

    filters = list(config.metadata_filters)
    result = prepare_dataset({
        "ingest": {"paths": [collected["input"]]},
        "filter": {"metadata": filters, "tokenizer": tokenizer},
        "export": {"output_dir": str(out), "format_type": "messages", "min_conversations": 1},
        "split": {"train_ratio": 0.8, "validation_ratio": 0.1, "test_ratio": 0.1, "seed": config.seed},
    })
    kept = result.stats.get("records_written", result.stats.get("kept"))
    if kept is not None and kept < config.min_conversations:
        raise ValueError(f"Only {kept} conversations passed the filters (min_conversations="
                         f"{config.min_conversations}): collect more or relax min_feedback / metadata_filters. "
                         f"Counts per filter: {out / 'stats.json'}")
    return {"splits": {k: str(v) for k, v in result.splits.items()}, "stats": str(out / "stats.json")}


def _finetune(config: LoopConfig, prepared: dict, base: str, out: Path) -> dict:
    from finetune.train import finetune_model

    splits, ft = prepared["splits"], config.finetune  # the config's own fields, plus what this run decides:
    model_args = dataclasses.replace(ft.model_args, model_name_or_path=base)
    data_args = dataclasses.replace(ft.data_args, train_file=splits["train"], validation_file=splits.get("validation"))
    training_args = dataclasses.replace(ft.training_args, output_dir=str(out),
                                        do_eval=ft.training_args.do_eval and "validation" in splits)
    run = dataclasses.replace(ft, model_args=model_args, data_args=data_args, training_args=training_args)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = finetune_model(run)
    return {"output_dir": str(result.output_dir), "metrics": result.metrics}


def _evaluate(config: LoopConfig, prepared: dict, base: str, candidate: str, out: Path) -> dict:
    from finetune.evaluate import EvalConfig, evaluate_models

    split = prepared["splits"].get("test") or prepared["splits"].get("validation")
    results = evaluate_models([base, candidate], EvalConfig(
        task=config.task, data=split, max_examples=config.eval_examples, max_new_tokens=64, output_dir=str(out),
        labels=["current", "candidate"], perplexity=True))
    scores = {run["label"]: run["metrics"].get(config.metric) for run in results["runs"]}
    if None in scores.values():
        raise ValueError(f"LoopConfig.metric={config.metric!r} is not among the evaluation metrics: "
                         f"{sorted(results['runs'][0]['metrics'])}")
    current, new = scores["current"], scores["candidate"]
    gain = (current - new) if config.metric in LOWER_IS_BETTER else (new - current)
    from finetune.evaluate.report import REPORT_FILE

    return {"report": str(out / REPORT_FILE), "metric": config.metric, "current": current, "candidate": new,
            "better": gain > config.min_improvement}


def _promote(config: LoopConfig, evaluated: dict, candidate: str, models_dir: Path) -> dict:
    if not evaluated["better"]:
        logger.warning("Not promoted: %s %s (candidate) vs %s (current)", evaluated["metric"],
                       evaluated["candidate"], evaluated["current"])
        return {"promoted": False}
    models_dir.mkdir(parents=True, exist_ok=True)
    previous = promoted(models_dir)
    record = {"model": candidate, "promoted_at": time.time(), "metric": evaluated["metric"],
              "score": evaluated["candidate"], "replaced": previous["model"] if previous else None,
              "run_dir": str(Path(config.run_dir).resolve())}
    _write_json(models_dir / "promoted.json", record)
    return {"promoted": True, **record}


def _quantize(config: LoopConfig, candidate: str, out: Path) -> dict:
    from quantize import quantize_model

    artifact = quantize_model(config.quantize, model=candidate, output_dir=str(out))
    return {"artifact": str(artifact)}


def run_loop(config: LoopConfig) -> dict:
    """Run (or resume) one improvement cycle; return the state of every step."""
    from finetune.models import DEFAULT_MODEL

    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = _State(run_dir)
    models_dir = _models_dir(config)
    current = promoted(models_dir)
    base = state.done("collect") and state.data.get("base") or config.base_model or (
        current["model"] if current else DEFAULT_MODEL)
    state.data.update({"base": base, "config": config.to_dict()})

    since = current.get("promoted_at") if current else None
    collected = state.done("collect") or state.finish("collect", _collect(config, run_dir / "collect", since))
    prepared = state.done("prepare") or state.finish("prepare", _prepare(config, collected, run_dir / "data", base))
    tuned = state.done("finetune") or state.finish("finetune", _finetune(config, prepared, base, run_dir / "model"))
    candidate = tuned["output_dir"]
    evaluated = state.done("evaluate") or state.finish(
        "evaluate", _evaluate(config, prepared, base, candidate, run_dir / "eval"))
    decision = state.done("promote") or state.finish("promote", _promote(config, evaluated, candidate, models_dir))
    if decision["promoted"] and config.quantize:
        state.done("quantize") or state.finish("quantize", _quantize(config, candidate, run_dir / "serving"))
    return state.data
