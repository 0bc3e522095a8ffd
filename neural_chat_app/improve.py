"""The whole loop in one command: logged conversations -> data pipeline -> fine-tune -> preference-tune ->
evaluate against the current model -> promote only if the gate holds -> quantize for serving.

    python -m neural_chat_app improve --config configs/improve.yaml

What the log gives, and what each step makes of it:
- SFT (`finetune`): the liked conversations (`min_feedback`), each cut before its first thumbs-down reply, so a
  disliked reply is never a training target, whatever `min_feedback` says. Runs when at least `min_conversations`
  pass the data pipeline.
- Preference tuning (`preference`: dpo or kto): DPO pairs (the reply the user kept over one they regenerated or
  edited away) or KTO examples (each rated reply, thumbs up true, down false), in TRL's conversational format.
  Runs when there are at least `min_pairs` pairs (DPO) or `min_rated_replies` rated replies (KTO).
- How they compose: SFT first, then preference tuning starts from the SFT model (its merged weights), which is
  also DPO's/KTO's reference: the standard SFT -> DPO recipe, where the preference step only reorders what SFT
  taught. Either runs alone when the other has too little data; neither: the loop stops with the counts.
- The gate (`evaluate`, `promote`): current and candidate are scored on the held-out conversations (`metric`,
  from finetune.evaluate) and, when preference tuning ran, on the held-out pairs: reward accuracy and margin of the
  candidate against the current model as the reference (finetune.evaluate's dpo/kto task). The candidate is
  promoted only if every measured rule holds: the metric improves by more than `min_improvement`, the reward
  accuracy is at least `min_reward_accuracy` and the margin above `min_reward_margin`. state.json and the step's
  gate.json keep both models' numbers and the reasons.

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

STEPS = ("collect", "prepare", "finetune", "preference", "evaluate", "promote", "quantize")
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
    """The server's conversation log, a SQLite file or a postgresql:// URL (the server's chat_log.url); the
    conversations logged since the last promoted run are used."""
    data_dir: str | None = None
    """Or a folder (or file) of conversation logs in any format the data pipeline reads."""
    min_feedback: int | None = 1
    """chat_log only, SFT: keep conversations rated at least this (1: thumbs up only; None: every conversation).
    Whatever it is, a conversation ends before its first thumbs-down reply: a disliked reply is never a target."""
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
    preference: Literal["dpo", "kto"] | None = "dpo"
    """Preference tuning on the feedback: dpo (pairs of kept vs regenerated/edited-away replies), kto (thumbs up
    and down, unpaired), or null for SFT only."""
    min_pairs: int = 20
    """dpo: fewer pairs than this (kept by the data pipeline, held-out ones included): no preference tuning."""
    min_rated_replies: int = 40
    """kto: fewer rated replies than this (kept by the data pipeline): no preference tuning this run."""
    preference_heldout: float = 0.2
    """Share of the preference prompts held out for the gate (the data pipeline's test split, grouped by prompt)."""
    preference_finetune: TextGenerationFinetuningConfig = field(default_factory=dict, metadata=RAW_MAPPING)
    """Fine-tuning fields of the preference run (beta, learning_rate, max_steps, lora_rank, ...), flat as in a
    `python -m finetune` YAML; its task is `preference`, its model the SFT model (or the base without SFT)."""
    min_reward_accuracy: float = 50.0
    """Gate: the candidate's reward accuracy (%) on the held-out pairs must be at least this."""
    min_reward_margin: float = 0.0
    """Gate: the candidate's mean reward margin (nats) on the held-out pairs must be above this."""

    def __post_init__(self):
        if (self.chat_log is None) == (self.data_dir is None):
            raise ValueError("LoopConfig: set exactly one of chat_log (the server's conversation log: a SQLite file "
                             "or a postgresql:// URL) or data_dir")
        if self.min_feedback not in (None, -1, 1):
            raise ValueError(f"LoopConfig.min_feedback must be 1, -1 or null, got {self.min_feedback!r}")
        for name in ("min_pairs", "min_rated_replies", "min_conversations"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoopConfig.{name} must be at least 1, got {getattr(self, name)!r}")
        if not 0 < self.preference_heldout < 1:
            raise ValueError(f"LoopConfig.preference_heldout must be between 0 and 1, got {self.preference_heldout!r}")
        if isinstance(self.finetune, Mapping):
            self.finetune = self._finetune_config(self.finetune)
        if isinstance(self.preference_finetune, Mapping):
            self.preference_finetune = self._finetune_config(self.preference_finetune, "preference_finetune",
                                                             self.preference or "dpo")
        if isinstance(self.quantize, Mapping):
            self.quantize = bind(QuantizeConfig, self.quantize, "quantize")

    def _finetune_config(self, values: Mapping[str, Any], section: str = "finetune",
                         task: str | None = None) -> TextGenerationFinetuningConfig:
        owned = sorted(set(values) & (set(LOOP_OWNED) | ({"task"} if task else set())))
        if owned:
            use = LOOP_OWNED.get(owned[0], "preference (dpo or kto)")
            raise ConfigError(f"{section}.{owned[0]} is set by the loop for each run: use {use}")
        defaults = {"task": task or self.task, "seed": self.seed, "report_to": "none", "do_train": True,
                    "do_eval": not task,  # the preference run's held-out pairs are the gate's
                    "generation_eval": False}  # the evaluate step compares against the current model instead
        return TextGenerationFinetuningConfig.from_dict({**defaults, **values}, section)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Iterable = ()) -> LoopConfig:
        """The file's keys, then `key=value` overrides (`finetune.learning_rate=1e-4`)."""
        return load_config(cls, path, overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for state.json: the loop's keys, the four fine-tuning sections, the quantize fields."""
        sections = ("finetune", "preference_finetune", "quantize")
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in sections}
        for name in sections[:2]:
            ft = getattr(self, name)
            out[name] = {"model_args": asdict(ft.model_args), "data_args": asdict(ft.data_args),
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
    if not config.chat_log:
        return {"input": str(Path(config.data_dir).resolve())}
    from neural_chat_app.export_log import export_jsonl, export_preferences

    counts = export_jsonl(config.chat_log, out / "conversations.jsonl", min_feedback=config.min_feedback,
                          since=since, cut_disliked=True)
    result = {"input": str(out / "conversations.jsonl"), **counts}
    if config.preference:
        result["preference"] = export_preferences(config.chat_log, out / f"{config.preference}.jsonl",
                                                  config.preference, since=since)
    return result


def _prepare(config: LoopConfig, collected: dict, out: Path, tokenizer: str) -> dict:
    """The SFT splits and the preference splits, each with why it was skipped when there is too little."""
    sft = _prepare_sft(config, collected, out, tokenizer)
    preference = _prepare_preference(config, collected, out.parent / "preference_data", tokenizer)
    if "skipped" in sft and (preference is None or "skipped" in preference):
        reasons = [sft["skipped"]] + ([preference["skipped"]] if preference else [])
        raise ValueError("Nothing to train on: " + "; ".join(reasons))
    return {"sft": sft, "preference": preference}


def _prepare_sft(config: LoopConfig, collected: dict, out: Path, tokenizer: str) -> dict:
    from finetune.data import prepare_dataset

    if collected.get("conversations_written") == 0:
        return {"skipped": f"Only 0 conversations passed the filters (min_conversations={config.min_conversations})"}
    from finetune.data import NoConversationsError

    filters = list(config.metadata_filters)
    try:
        result = prepare_dataset({
            "ingest": {"paths": [collected["input"]]},
            "filter": {"metadata": filters, "tokenizer": tokenizer},
            "export": {"output_dir": str(out), "format_type": "messages", "min_conversations": 1},
            "split": {"train_ratio": 0.8, "validation_ratio": 0.1, "test_ratio": 0.1, "seed": config.seed},
        })
    except NoConversationsError:
        kept = 0
    else:
        kept = result.stats.get("records_written", result.stats.get("kept"))
    if kept is not None and kept < config.min_conversations:
        return {"skipped": f"Only {kept} conversations passed the filters (min_conversations="
                           f"{config.min_conversations}): collect more or relax min_feedback / metadata_filters. "
                           f"Counts per filter: {out / 'stats.json'}"}
    return {"splits": {k: str(v) for k, v in result.splits.items()}, "stats": str(out / "stats.json")}


def _prepare_preference(config: LoopConfig, collected: dict, out: Path, tokenizer: str) -> dict | None:
    """The exported preference rows through the data pipeline, as the SFT conversations go (cleaning, dedup,
    rejects; splits grouped by prompt, so a held-out pair never shares its prompt with training), or why there are
    too few."""
    exported = collected.get("preference")
    if not config.preference or exported is None:
        return None
    from finetune.data import NoConversationsError, prepare_dataset

    kind = config.preference
    needed, setting = (config.min_pairs, "min_pairs") if kind == "dpo" else (config.min_rated_replies,
                                                                            "min_rated_replies")
    noun = "pairs" if kind == "dpo" else "rated replies"
    found = exported["pairs_written" if kind == "dpo" else "rated_replies_written"]
    if found >= needed:
        try:
            result = prepare_dataset({
                "ingest": {"paths": [exported["output"]]},
                "filter": {"tokenizer": tokenizer},
                "export": {"output_dir": str(out), "format_type": "preference", "preference_task": kind,
                           "preference_style": "conversational", "min_conversations": 1},
                "split": {"train_ratio": 1 - config.preference_heldout, "validation_ratio": 0.0,
                          "test_ratio": config.preference_heldout, "seed": config.seed},
            })
        except NoConversationsError:
            found = 0
        else:
            counts = {name: part["examples"] for name, part in result.stats["splits"].items()}
            found = result.stats.get("records_written", found)
            if found >= needed and counts.get("train") and counts.get("test"):
                return {"task": kind, "splits": {k: str(v) for k, v in result.splits.items()}, "counts": counts,
                        "stats": str(out / "stats.json")}
            if found >= needed:
                return {"skipped": f"{found} {noun} for {kind}, but too few distinct prompts to hold some out "
                                   f"(splits: {counts}): raise preference_heldout or collect more"}
    return {"skipped": f"Only {found} {noun} for {kind} passed the data pipeline ({setting}={needed}): "
                       f"regenerate, edit and rate more replies, or lower {setting}"}


def _finetune(config: LoopConfig, prepared: dict, base: str, out: Path,
              section: str = "finetune") -> dict:
    from finetune.train import finetune_model

    if "skipped" in prepared:
        return {"skipped": prepared["skipped"]}
    splits, ft = prepared["splits"], getattr(config, section)  # the config's own fields, plus what this run decides:
    model_args = dataclasses.replace(ft.model_args, model_name_or_path=base)
    data_args = dataclasses.replace(ft.data_args, train_file=splits["train"], validation_file=splits.get("validation"))
    training_args = dataclasses.replace(ft.training_args, output_dir=str(out),
                                        do_eval=ft.training_args.do_eval and "validation" in splits)
    run = dataclasses.replace(ft, model_args=model_args, data_args=data_args, training_args=training_args)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = finetune_model(run)
    return {"output_dir": str(result.output_dir), "metrics": result.metrics, "base": base}


def _evaluate(config: LoopConfig, prepared: dict, base: str, candidate: str, out: Path) -> dict:
    """Both models on the held-out conversations (`metric`) and on the held-out preference examples; the gate."""
    from finetune.evaluate import EvalConfig, evaluate_models
    from finetune.evaluate.report import REPORT_FILE

    result: dict[str, Any] = {"sft": None, "preference": None}
    sft = prepared["sft"]
    split = "skipped" not in sft and (sft["splits"].get("test") or sft["splits"].get("validation"))
    if split:
        results = evaluate_models([base, candidate], EvalConfig(
            task=config.task, data=split, max_examples=config.eval_examples, max_new_tokens=64,
            output_dir=str(out), labels=["current", "candidate"], perplexity=True))
        scores = {run["label"]: run["metrics"].get(config.metric) for run in results["runs"]}
        if None in scores.values():
            raise ValueError(f"LoopConfig.metric={config.metric!r} is not among the evaluation metrics: "
                             f"{sorted(results['runs'][0]['metrics'])}")
        result["sft"] = {"report": str(out / REPORT_FILE), "metric": config.metric, **scores}
    pref = prepared.get("preference")
    if pref and "skipped" not in pref:
        from finetune.evaluate.preference import evaluate_preferences

        results = evaluate_preferences([base, candidate], EvalConfig(
            task=pref["task"], data=pref["splits"]["test"], max_examples=None, output_dir=str(out / "preference"),
            labels=["current", "candidate"], plots=False))
        keep = ("reward_accuracy", "reward_margin", "preference_accuracy", "chosen_logp", "rejected_logp", "examples")
        result["preference"] = {"report": str(out / "preference" / REPORT_FILE), "task": pref["task"],
                                **{run["label"]: {k: run["metrics"].get(k) for k in keep}
                                   for run in results["runs"]}}
    result.update(gate(config, result["sft"], result["preference"]))
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "gate.json", result)
    # the fields earlier runs' state.json had, for readers of it
    if result["sft"]:
        result.update(metric=config.metric, current=result["sft"]["current"], candidate=result["sft"]["candidate"])
    return result


def gate(config: LoopConfig, sft: dict | None, preference: dict | None) -> dict:
    """The promotion rule on what was measured: {"better": every rule holds, "rules": [{rule, value, holds}]}.
    A run that measured nothing is never promoted."""
    rules = []
    if sft:
        current, new = sft["current"], sft["candidate"]
        gain = (current - new) if sft["metric"] in LOWER_IS_BETTER else (new - current)
        rules.append({"rule": f"{sft['metric']} gain > min_improvement ({config.min_improvement})",
                      "value": gain, "holds": gain > config.min_improvement})
    if preference:
        candidate = preference["candidate"]
        accuracy, margin = candidate["reward_accuracy"], candidate["reward_margin"]
        rules.append({"rule": f"reward_accuracy >= min_reward_accuracy ({config.min_reward_accuracy})",
                      "value": accuracy, "holds": accuracy is not None and accuracy >= config.min_reward_accuracy})
        rules.append({"rule": f"reward_margin > min_reward_margin ({config.min_reward_margin})",
                      "value": margin, "holds": margin is not None and margin > config.min_reward_margin})
    return {"better": bool(rules) and all(r["holds"] for r in rules), "rules": rules}


def _promote(config: LoopConfig, evaluated: dict, candidate: str, models_dir: Path) -> dict:
    if not evaluated["better"]:
        failed = [f"{r['rule']}: {r['value']}" for r in evaluated.get("rules", []) if not r["holds"]]
        logger.warning("Not promoted: %s", "; ".join(failed) or "nothing measured")
        return {"promoted": False, "failed": failed}
    models_dir.mkdir(parents=True, exist_ok=True)
    previous = promoted(models_dir)
    sft, pref = evaluated.get("sft"), evaluated.get("preference")
    record = {"model": candidate, "promoted_at": time.time(), "metric": sft and sft["metric"],
              "score": sft and sft["candidate"], "replaced": previous["model"] if previous else None,
              "preference": pref and {"task": pref["task"], **pref["candidate"]},
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
    if "sft" not in prepared:  # a state.json written before preference tuning: its SFT splits only
        prepared = {"sft": prepared, "preference": None}
    tuned = state.done("finetune") or state.finish("finetune", _finetune(config, prepared["sft"], base,
                                                                         run_dir / "model"))
    candidate = tuned.get("output_dir", base)
    # preference tuning starts from the SFT model, its reference too (the module docstring)
    preferred = state.done("preference") or state.finish("preference", _finetune(
        config, prepared.get("preference") or {"skipped": "preference: null"}, candidate, run_dir / "preference",
        "preference_finetune"))
    candidate = preferred.get("output_dir", candidate)
    evaluated = state.done("evaluate") or state.finish(
        "evaluate", _evaluate(config, prepared, base, candidate, run_dir / "eval"))
    decision = state.done("promote") or state.finish("promote", _promote(config, evaluated, candidate, models_dir))
    if decision["promoted"] and config.quantize:
        state.done("quantize") or state.finish("quantize", _quantize(config, candidate, run_dir / "serving"))
    _write_report(run_dir, state.data)
    return state.data


def _write_report(run_dir: Path, data: dict) -> None:
    """report.md: what each step did and the gate's numbers, for a person (state.json holds the same)."""
    steps = data["steps"]
    lines = [f"# Improvement run {run_dir}", "", f"Base (current model): {data['base']}", ""]
    for step in STEPS:
        if step not in steps:
            continue
        result = steps[step]
        if result.get("skipped"):
            summary = f"skipped: {result['skipped']}"
        elif step == "prepare":
            parts = {part: result[part] or {} for part in ("sft", "preference")}
            summary = "; ".join(f"{part}: {r.get('skipped') or r.get('counts') or ('prepared' if r else 'off')}"
                                for part, r in parts.items())
        elif step == "collect":
            pref = {k: v for k, v in (result.get("preference") or {}).items() if k != "output"}
            summary = f"{result.get('conversations_written')} conversations for SFT; preference export {pref}"
        elif step in ("finetune", "preference"):
            summary = f"{result['output_dir']} (from {result['base']})"
        elif step == "promote":
            summary = "promoted" if result["promoted"] else f"not promoted: {'; '.join(result['failed'])}"
        else:
            summary = "done"
        lines.append(f"- **{step}**: {summary}")
    evaluated = steps.get("evaluate")
    if evaluated:
        lines += ["", "## Gate", "", "| rule | value | holds |", "|---|---|---|"]
        lines += [f"| {r['rule']} | {_num(r['value'])} | {r['holds']} |" for r in evaluated["rules"]]
        if evaluated.get("sft"):
            sft = evaluated["sft"]
            lines += ["", f"{sft['metric']}: current {_num(sft['current'])}, candidate {_num(sft['candidate'])}"]
        if evaluated.get("preference"):
            pref = evaluated["preference"]
            lines += ["", f"Held-out {pref['task']} examples: {pref['candidate']['examples']}", "",
                      "| model | reward_accuracy | reward_margin | preference_accuracy |", "|---|---|---|---|"]
            lines += [f"| {label} | {_num(pref[label]['reward_accuracy'])} | {_num(pref[label]['reward_margin'])} | "
                      f"{_num(pref[label].get('preference_accuracy'))} |" for label in ("current", "candidate")]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
