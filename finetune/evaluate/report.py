"""Write the evaluation report: results JSON, a Markdown report, and PNG plots (loss curves, metric bars)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

RESULTS_FILE = "eval_results.json"
REPORT_FILE = "eval_report.md"
OUTPUTS_FILE = "eval_outputs.jsonl"  # one line per reply: run, where, reference, output
COLUMNS = [
    ("perplexity", "ppl"), ("json_validity", "JSON valid %"), ("schema_validity", "schema valid %"),
    ("attribute_f1", "attr F1"), ("aspect_f1", "aspect-sent F1"), ("aspect_sentiment_accuracy", "aspect acc"),
    ("overall_sentiment_accuracy", "overall acc"), ("extraction_exact_match", "exact %"), ("bleu", "BLEU"),
    ("chrf", "chrF"), ("rouge1", "R-1"), ("rouge2", "R-2"), ("rougeL", "R-L"), ("exact_match", "EM %"),
    ("token_reduction_pct", "tok red %"), ("tool_call_rate", "calls %"), ("tool_name_accuracy", "right tool %"),
    ("tool_call_exact", "exact call %"), ("false_call_rate", "false calls %"), ("reward_accuracy", "reward acc %"),
    ("reward_margin", "margin (nats)"),
    ("preference_accuracy", "prefers chosen %"), ("chosen_logp", "logp chosen"), ("rejected_logp", "logp rejected"),
    ("examples_per_s", "ex/s"),
]
BAR_METRICS = {
    "extraction": ["json_validity", "schema_validity", "attribute_f1", "aspect_f1", "aspect_sentiment_accuracy",
                   "overall_sentiment_accuracy"],
    "preference": ["reward_accuracy", "preference_accuracy"],
    "default": ["bleu", "chrf", "rouge1", "rougeL", "exact_match"],
}
PREFERENCE_TASKS = ("dpo", "kto")  # finetune.config's, without importing torch for a report


def _bar_kind(task: str) -> str:
    return "extraction" if task == "extraction" else ("preference" if task in PREFERENCE_TASKS else "default")


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _columns(results: dict) -> list[tuple[str, str]]:
    present = {k for r in results["runs"] for k, v in r["metrics"].items() if v is not None}
    return [(k, name) for k, name in COLUMNS if k in present]


def headline_rows(results: dict) -> list[list[str]]:
    cols = _columns(results)
    rows = [["run", "few-shot", *[name for _, name in cols]]]
    for r in results["runs"]:
        rows.append([r["label"], str(r["few_shot"]), *[_fmt(r["metrics"].get(k)) for k, _ in cols]])
    return rows


def _md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def write_report(results: dict, out_dir: Path, specs, plots: bool = True, replies: list[dict] | None = None) -> Path:
    """The results JSON, the markdown report and its plots, and (given `replies`) every reply as JSON lines."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))
    if replies is not None:
        with open(out_dir / OUTPUTS_FILE, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in replies)
    images = []
    if plots:
        images = [p for p in (plot_losses(specs, out_dir / "loss_curves.png"),
                              plot_metrics(results, out_dir / "metrics.png")) if p is not None]
    report = out_dir / REPORT_FILE
    report.write_text(render_markdown(results, images), encoding="utf-8")
    logger.info("Evaluation report: %s", report)
    return report


def render_markdown(results: dict, images: list[Path]) -> str:
    cfg = results["config"]
    if results["task"] in PREFERENCE_TASKS:
        intro = [f"{results['examples']} held-out preference records from `{results['data']}`; each reply scored "
                 f"by its log-probability given the prompt; {results['created']}; CPU {results['machine'].get('cpu')}.",
                 "The first model is the baseline and the reference: a model's reward for a reply is its log-ratio "
                 "against the baseline (nats). Reward accuracy: % of pairs whose chosen reply gets the higher reward "
                 "(0 for the baseline, whose rewards are all 0); margin: mean reward of chosen minus rejected; "
                 "prefers chosen: % of pairs whose chosen reply the model itself finds likelier "
                 "(finetune/evaluate/preference.py)."]
    else:
        intro = [f"{results['examples']} held-out examples from `{results['data']}`; greedy decoding, max_new_tokens="
                 f"{cfg['max_new_tokens']}, batch {cfg['batch_size']}; {results['created']}; CPU "
                 f"{results['machine'].get('cpu')}.",
                 "The first model is the baseline. Perplexity is of the reference replies (n/a on OpenVINO, which "
                 "returns no logits). Field scores read the first JSON object of a reply; JSON validity needs the "
                 "whole reply to be JSON."]
    parts = [
        f"# Evaluation: task {results['task']}",
        "",
        *intro,
        "",
        "## Models",
        "",
        _md_table([["model", "path", "backend", "fine-tuned for"]] + [
            [m["label"], f"`{m['path']}`" + (f" + adapter `{m['adapter']}`" if m.get("adapter") else ""),
             "openvino" if m["is_openvino"] else "transformers", m.get("task") or "-"]
            for m in results["models"]]),
        "",
        "## Results",
        "",
        _md_table(headline_rows(results)),
        "",
    ]
    deltas = [r for r in results["runs"] if r["metrics"].get("delta_vs_base")]
    if deltas:
        keys = [k for k, _ in _columns(results) if any(k in r["metrics"]["delta_vs_base"] for r in deltas)]
        parts += ["## Change against the baseline (same decoding)", "",
                  _md_table([["run", *keys]] + [[r["label"], *[_fmt(r["metrics"]["delta_vs_base"].get(k))
                                                               for k in keys]] for r in deltas]), ""]
    if results["task"] == "extraction":
        parts += ["## Extraction details", ""]
        for r in results["runs"]:
            m = r["metrics"]
            parts += [f"### {r['label']}", "",
                      f"Attribute F1 by type: {m['attribute_f1_by_type']}; aspect accuracy by gold sentiment: "
                      f"{m['aspect_accuracy_by_sentiment']}.", "",
                      "Aspect sentiment confusion (rows: reference, columns: output):", "",
                      _confusion_table(m["aspect_confusion"]), "",
                      "Overall sentiment confusion:", "", _confusion_table(m["overall_confusion"]), ""]
    parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    parts += ["## Sample outputs", ""]
    for r in results["runs"]:
        parts.append(f"### {r['label']}")
        parts.append("")
        for s in r["samples"][:3]:
            parts += [f"- `{s['where']}`", f"  - reference: `{s['reference']}`", f"  - output: `{s['output']}`"]
        parts.append("")
    return "\n".join(parts)


def _confusion_table(matrix: dict) -> str:
    cols = list(next(iter(matrix.values())))
    return _md_table([["", *cols]] + [[row, *[str(matrix[row][c]) for c in cols]] for row in matrix])


def _pyplot():
    from finetune.extras import install_hint

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (%s)", install_hint("matplotlib"))
        return None
    return plt


def plot_losses(specs, path: Path) -> Path | None:
    """Training and eval loss against step for every model with a training_metadata.json."""
    curves = []
    for spec in specs:
        if not spec.metadata_file:
            continue
        try:
            metadata = json.loads(Path(spec.metadata_file).read_text())
        except (OSError, ValueError):
            continue
        history = metadata.get("history") or []
        train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
        evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
        before = (metadata.get("metrics") or {}).get("eval_loss_before")
        if before is not None:  # the base model's eval loss, measured before the first step
            evals.insert(0, (0, before))
        if train or evals:
            curves.append((spec.label, train, evals))
    plt = _pyplot() if curves else None
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, train, evals in curves:
        if train:
            ax.plot(*zip(*train), label=f"{label} train")
        if evals:
            ax.plot(*zip(*evals), marker="o", linestyle="--", label=f"{label} eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss curves (training_metadata.json)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metrics(results: dict, path: Path) -> Path | None:
    keys = BAR_METRICS[_bar_kind(results["task"])]
    runs = results["runs"]
    keys = [k for k in keys if any(r["metrics"].get(k) is not None for r in runs)]
    plt = _pyplot() if keys and runs else None
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(keys)), 4.5))
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        values = [r["metrics"].get(k) or 0.0 for k in keys]
        xs = [j + i * width for j in range(len(keys))]
        bars = ax.bar(xs, values, width, label=r["label"])
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(keys))])
    ax.set_xticklabels(keys, rotation=15, fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("score (0-100)")
    ax.set_title(f"{results['task']}: {results['examples']} held-out examples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
