"""Render benchmarks/results/REPORT.md (tables, PNG plots, each figure beside its limit and target) from the
result JSON files, and the headline table of the README.

    python -m benchmarks report
    python -m benchmarks report --gpu results-from-a-gpu-host/*.json --prices configs/prices.yaml

Reads the newest result of each benchmark in benchmarks/results/ (roofline, train, infer, serve_load,
data_pipeline, quantize_quality, extraction_quality) and any GPU result files (`--device cuda` runs of train and
infer, produced on a GPU host and copied here). Nothing is measured here: run the benchmarks first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import machine
from benchmarks.machine import REPO, cpu_label, markdown_table, same_cpu

README = REPO / "README.md"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def _newest(pattern: str, results: Path) -> dict | None:
    # by the timestamp in the name: a fresh clone gives every file the same mtime
    files = sorted((p for p in results.glob(pattern) if "-latest" not in p.name), key=lambda p: p.name[-20:])
    return json.loads(files[-1].read_text()) if files else None


def load_results(results: Path, gpu_files: list[Path]) -> dict:
    found = {name: _newest(pattern, results) for name, pattern in {
        "roofline": "roofline-2*.json", "train": "train-2*.json", "infer": "infer-2*.json",
        "train_sweep": "train-sweep-2*.json",
        "train_gpu": "train-cuda-2*.json", "infer_gpu": "infer-cuda-2*.json",
        "serve": "serve_load-*.json", "quantize": "quantize_quality*.json", "extraction": "extraction_quality*.json",
    }.items()}
    data = results / "data_pipeline.json"
    found["data"] = json.loads(data.read_text()) if data.is_file() else None
    for path in gpu_files:
        payload = json.loads(Path(path).read_text())
        found[f"{payload.get('benchmark')}_gpu"] = payload
    return found


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "NOT met")


def _shape_fraction(row: dict) -> str:
    """" (N% of the model-shape limit)" beside a bf16-limit fraction; empty for results that predate it."""
    fraction = row.get("fraction_of_model_shape_limit")
    return f" ({fraction:.0%} of the model-shape limit)" if fraction is not None else ""


def train_section(train: dict) -> tuple[str, list[dict]]:
    from benchmarks.train import limit_fraction

    rows = {r["variant"]: r for r in train["results"]}
    ours, fp32, bf16 = rows.get("ours"), rows.get("plain-fp32"), rows.get("plain-bf16")
    targets = []
    if ours and fp32:
        targets.append({"target": "ours >= 3x plain-fp32 useful tok/s",
                        "measured": f"{ours['useful_tokens_per_s'] / fp32['useful_tokens_per_s']:.2f}x",
                        "status": _mark(ours["useful_tokens_per_s"] >= 3 * fp32["useful_tokens_per_s"])})
        targets.append({"target": "held-out loss no worse than plain-fp32 by 1%",
                        "measured": f"{(ours['eval_loss'] / fp32['eval_loss'] - 1) * 100:+.2f}%",
                        "status": _mark(ours["eval_loss"] <= fp32["eval_loss"] * 1.01)})
    if ours and bf16:
        targets.append({"target": "ours >= 1.5x plain-bf16 useful tok/s",
                        "measured": f"{ours['useful_tokens_per_s'] / bf16['useful_tokens_per_s']:.2f}x",
                        "status": _mark(ours["useful_tokens_per_s"] >= 1.5 * bf16["useful_tokens_per_s"])})
    if ours:
        precision = train.get("train_precision", "bf16")
        targets.append({"target": f">= 45% of the matmul limit ({precision}, this machine's training precision)",
                        "measured": f"{limit_fraction(ours):.0%}{_shape_fraction(ours)}",
                        "status": _mark(limit_fraction(ours) >= 0.45)})
        targets.append({"target": "peak RSS < 2 GB", "measured": f"{ours['peak_rss_mb']} MB",
                        "status": _mark(ours["peak_rss_mb"] < 2048)})
    from benchmarks.train import render

    return render(train) + "\n\n" + markdown_table(targets, [("target", "target"), ("measured", "measured"),
                                                              ("status", "status")]), targets


def infer_section(infer: dict) -> tuple[str, list[dict]]:
    from benchmarks.infer import render

    def pick(path, batch=1, prompt=64):
        return next((r for r in infer["results"] if r["path"] == path and r["batch"] == batch
                     and r["prompt_tokens"] == prompt and "decode_tokens_per_s" in r), None)

    targets = []
    best_bf16 = max((pick(p) for p in ("hf-bf16", "ov-bf16") if pick(p)), key=lambda r: r["decode_tokens_per_s"],
                    default=None)
    if best_bf16:
        targets.append({"target": "bf16 decode >= 90% of the bandwidth limit (batch 1)",
                        "measured": f"{best_bf16['fraction_of_decode_limit']:.0%} ({best_bf16['path']})",
                        "status": _mark(best_bf16["fraction_of_decode_limit"] >= 0.9)})
    int4, llama = pick("ov-int4"), pick("llamacpp")
    if int4:
        targets.append({"target": "INT4 decode faster than llama.cpp (same run)",
                        "measured": f"{int4['decode_tokens_per_s']:.0f} vs "
                                    f"{llama['decode_tokens_per_s']:.0f} tok/s" if llama else "llama.cpp not measured",
                        "status": _mark(int4["decode_tokens_per_s"] > llama["decode_tokens_per_s"]) if llama else "-"})
    fastest_first = min((r for r in infer["results"] if r.get("prompt_tokens") == 64 and r.get("batch") == 1
                         and "ttft_ms" in r), key=lambda r: r["ttft_ms"], default=None)
    if fastest_first:
        targets.append({"target": "first token < 25 ms (64-token prompt)",
                        "measured": f"{fastest_first['ttft_ms']:.0f} ms ({fastest_first['path']})",
                        "status": _mark(fastest_first["ttft_ms"] < 25)})
    return render(infer) + "\n\n" + markdown_table(targets, [("target", "target"), ("measured", "measured"),
                                                              ("status", "status")]), targets


def serve_section(serve: dict) -> tuple[str, list[dict]]:
    levels = {lv["concurrency"]: lv for lv in serve.get("levels", [])}
    hw = serve.get("hardware", {})
    lines = [f"backend={serve.get('backend')} model={serve.get('model')} max_tokens={serve.get('max_tokens')} | "
             f"{cpu_label({'hardware': hw})}, {hw.get('usable_cores')} cores ({serve.get('created_at')})"]
    rows = [{"streams": c, "tokens/s": lv.get("tokens_per_s"),
             "of bandwidth limit": lv.get("fraction_of_decode_limit"), "p50 TTFT s": lv.get("ttft_p50_s"),
             "p99 TTFT s": lv.get("ttft_p99_s"), "p99 latency s": lv.get("latency_p99_s"),
             "errors": lv.get("errors", "not counted")} for c, lv in sorted(levels.items())]
    targets = []
    if 1 in levels:
        one = levels[1]["tokens_per_s"]
        for c, need in ((8, 3.8), (16, 5.5)):
            if c in levels:
                ratio = levels[c]["tokens_per_s"] / one
                targets.append({"target": f"{c} streams >= {need}x the tokens/s of 1", "measured": f"{ratio:.2f}x",
                                "status": _mark(ratio >= need)})
        if 8 in levels and levels[8].get("ttft_p99_s") is not None:
            targets.append({"target": "p99 first-token latency < 1 s at 8 streams",
                            "measured": f"{levels[8]['ttft_p99_s']:.2f} s",
                            "status": _mark(levels[8]["ttft_p99_s"] < 1)})
    cols = [(k, k) for k in ("streams", "tokens/s", "of bandwidth limit", "p50 TTFT s", "p99 TTFT s",
                             "p99 latency s", "errors")]
    return "\n".join(lines) + "\n" + markdown_table(rows, cols) + "\n\n" + markdown_table(
        targets, [("target", "target"), ("measured", "measured"), ("status", "status")]), targets


def device_rows(found: dict, prices: dict) -> list[dict]:
    """One row per training variant and per batch-8 inference setting, CPU results first, then GPU ones."""
    rows = []
    for kind in ("train", "infer"):
        for suffix, label in (("", "cpu"), ("_gpu", "gpu")):
            payload = found.get(kind + suffix)
            if not payload:
                continue
            hw = payload["machine"]["hardware"]
            name = hw.get("cuda_device") if label == "gpu" else hw["cpu_model"]
            price = prices.get(label)
            for r in payload["results"]:
                speed = r.get("useful_tokens_per_s") or (r.get("decode_tokens_per_s") if r.get("batch") == 8 else None)
                if speed is None:
                    continue
                rows.append({"benchmark": kind, "device": f"{label}: {name}", "what": r.get("variant") or
                             f"{r['path']} batch {r['batch']} prompt {r['prompt_tokens']}", "tok/s": speed,
                             "Mtok per $": speed * 3600 / price / 1e6 if price else None,
                             "tok per J": r.get("tokens_per_joule")})
    return rows


def cpu_vs_gpu(found: dict, prices: dict) -> str:
    rows = device_rows(found, prices)
    if not rows:
        return "No results yet."
    note = (f"Prices ({prices.get('source', 'configs/prices.yaml')}): cpu {prices.get('cpu')} $/h, gpu "
            f"{prices.get('gpu')} $/h. Energy is shown where the host exposes it (RAPL or NVML).")
    cols = [(k, k) for k in ("benchmark", "device", "what", "tok/s", "Mtok per $", "tok per J")]
    return note + "\n" + markdown_table(rows, cols)


def plots(found: dict, prices: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    infer = found.get("infer")
    if infer:
        rows = [r for r in infer["results"] if r.get("batch") == 1 and r.get("prompt_tokens") == 64
                and "decode_tokens_per_s" in r]
        if rows:
            fig, ax = plt.subplots(figsize=(7, 3.5))
            ax.bar([r["path"] for r in rows], [r["decode_tokens_per_s"] for r in rows], color="#3b75af",
                   label="measured")
            ax.scatter([r["path"] for r in rows], [r["decode_limit_tokens_per_s"] for r in rows], color="#c44e52",
                       marker="_", s=600, label="bandwidth limit")
            ax.set_ylabel("decode tokens/s (batch 1)")
            ax.set_title("Inference by precision and backend")
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / "infer_tokens_per_s.png", dpi=110)
            plt.close(fig)
            made.append("infer_tokens_per_s.png")
    train = found.get("train")
    if train:
        from benchmarks.train import limit_fraction

        rows = train["results"]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar([r["variant"] for r in rows], [limit_fraction(r) * 100 for r in rows], color="#55a868")
        ax.axhline(45, color="#c44e52", linestyle="--", label="target 45%")
        ax.set_ylabel(f"% of the {train.get('train_precision', 'bf16')} matmul limit")
        ax.set_title("Training: useful tokens/s against the roofline")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "train_roofline_fraction.png", dpi=110)
        plt.close(fig)
        made.append("train_roofline_fraction.png")
    rows = device_rows(found, prices)
    if rows:
        made.append(_device_plot(plt, rows, out / "cpu_vs_gpu.png"))
    return made


def _device_plot(plt, rows: list[dict], path: Path) -> str:
    """Tokens/s and tokens per dollar of every CPU and GPU row, side by side (GPU rows appear when a GPU host's
    result files are passed with --gpu)."""
    labels = [f"{r['benchmark']} {r['what']} ({r['device'].split(':')[0]})" for r in rows]
    colors = ["#3b75af" if r["device"].startswith("cpu") else "#dd8452" for r in rows]
    panels = [("tok/s", "tokens/s")] + ([("Mtok per $", "million tokens per $")]
                                        if any(r["Mtok per $"] for r in rows) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 + 3 * len(panels), 1 + 0.28 * len(rows)), sharey=True,
                             squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        ax.barh(labels, [r[key] or 0 for r in rows], color=colors)
        ax.set_xlabel(title)
    axes[0][0].invert_yaxis()  # the panels share the axis: once, so the rows read top-down in table order
    axes[0][0].set_title("CPU (blue) vs GPU (orange)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def headline(found: dict) -> str:
    """The README's table. Each row is one result file's own figures and ratios; where the files come from
    different CPUs, each row names its CPU (a ratio never spans two machines)."""
    from benchmarks.train import limit_fraction

    rows = []
    train = found.get("train")
    if train:
        r = {x["variant"]: x for x in train["results"]}
        if "ours" in r:
            base = r.get("plain-fp32")
            rows.append({"what": "LoRA fine-tuning, useful tokens/s",
                         "figure": f"{r['ours']['useful_tokens_per_s']:.0f}",
                         "vs": f"{r['ours']['speedup_vs_plain_fp32']:.2f}x the plain fp32 recipe" if base else "-",
                         "limit": f"{limit_fraction(r['ours']):.0%} of the "
                                  f"{train.get('train_precision', 'bf16')} matmul limit"
                                  f"{_shape_fraction(r['ours'])}", "machine": train["machine"]})
    infer = found.get("infer")
    if infer:
        batch1 = [x for x in infer["results"] if x.get("batch") == 1 and x.get("prompt_tokens") == 64
                  and "decode_tokens_per_s" in x]
        best = max((x for x in batch1 if x["path"] != "llamacpp"), key=lambda x: x["decode_tokens_per_s"],
                   default=None)
        llama = next((x for x in batch1 if x["path"] == "llamacpp"), None)
        if best:
            versus = f"first token {best['ttft_ms']:.0f} ms"
            if llama:
                versus += (f"; llama.cpp (same run) {llama['decode_tokens_per_s']:.0f} tok/s, first token "
                           f"{llama['ttft_ms']:.0f} ms")
            rows.append({"what": f"decode, batch 1, 64-token prompt ({best['path']})",
                         "figure": f"{best['decode_tokens_per_s']:.0f} tok/s", "vs": versus,
                         "limit": f"{best['fraction_of_decode_limit']:.0%} of the bandwidth limit",
                         "machine": infer["machine"]})
    serve = found.get("serve")
    if serve:
        levels = {lv["concurrency"]: lv for lv in serve.get("levels", [])}
        if 1 in levels and 8 in levels:
            rows.append({"what": f"chat server, 8 streaming clients ({serve.get('backend')})",
                         "figure": f"{levels[8]['tokens_per_s']:.0f} tok/s",
                         "vs": f"{levels[8]['tokens_per_s'] / levels[1]['tokens_per_s']:.2f}x one client",
                         "limit": f"p99 first token {levels[8]['ttft_p99_s']:.2f} s",
                         "machine": {"hardware": serve.get("hardware", {}), "time": serve.get("created_at")}})
    if not rows:
        return "No benchmark results yet: run `python -m benchmarks train` and `python -m benchmarks infer`."
    columns = [("what", "what"), ("figure", "figure"), ("vs", "compared"), ("limit", "limit")]
    first = rows[0]["machine"]
    if all(same_cpu(first, r["machine"]) for r in rows):
        hw = first["hardware"]
        load = first.get("load_average_1min")
        busy = f" The machine was busy (load average {load:.1f} at the start): provisional." if (
            load is not None and load > hw["usable_cores"] / 2) else ""
        machine_line = f"Measured on {cpu_label(first)}, {hw['usable_cores']} cores ({first['time']}).{busy}"
    else:
        machine_line = "These results come from different CPUs: each row names its own, and no ratio spans two."
        columns.append(("cpu", "CPU"))
        for r in rows:
            r["cpu"] = cpu_label(r["machine"])
    return machine_line + "\n\n" + markdown_table(rows, columns)


def render_report(found: dict, prices: dict, out: Path) -> str:
    parts = ["# Benchmark report", "",
             "Generated by `python -m benchmarks report` from the result files in this folder; do not edit by hand.",
             ""]
    if found.get("roofline"):
        from benchmarks.roofline import render

        parts += ["## Roofline", "", render(found["roofline"]), ""]
    sections = (("train", "## Training", train_section), ("infer", "## Inference", infer_section),
                ("serve", "## Serving", serve_section))
    for key, title, fn in sections:
        parts += [title, ""]
        parts += [fn(found[key])[0] if found.get(key) else f"No {key} results yet: run `python -m benchmarks {key}`.",
                  ""]
        if key == "train" and found.get("train_sweep"):
            from benchmarks.train import render_sweeps

            parts += ["### Training sweeps (`python -m benchmarks train --sweep ...`)", "",
                      render_sweeps(found["train_sweep"]), ""]
    parts += ["## CPU vs GPU", "", cpu_vs_gpu(found, prices), ""]
    for name in plots(found, prices, out):
        parts += [f"![{name}]({name})", ""]
    return "\n".join(parts)


def update_readme(table: str, readme: Path | None = None) -> bool:
    readme = readme or README
    text = readme.read_text()
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    return True


def _prices(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    # the report is committed: name a file of this repository by its path in it, not by this checkout's location
    source = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
    return {**data, "source": str(source)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks report", description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=None, help="folder of result JSON files")
    p.add_argument("--gpu", type=Path, nargs="*", default=[], help="GPU result files (train/infer --device cuda)")
    p.add_argument("--prices", type=Path, default=REPO / "configs" / "prices.yaml")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite the README's headline table")
    args = p.parse_args(argv)
    results = args.results or machine.RESULTS
    results.mkdir(parents=True, exist_ok=True)
    found = load_results(results, args.gpu)
    report = render_report(found, _prices(args.prices), results)
    (results / "REPORT.md").write_text(report)
    print(report)
    if not args.no_readme and update_readme(headline(found)):
        print(f"updated the headline table in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
