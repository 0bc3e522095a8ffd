"""One table over all artifacts of a model (size, perplexity delta, agreement, speed) and a size-vs-quality PNG."""

from __future__ import annotations

from pathlib import Path

from quantize.artifacts import list_artifacts, read_metadata

COLUMNS = [
    ("artifact", "artifact", "{}"),
    ("backend", "backend", "{}"),
    ("weights MB", "weights_mb", "{:.1f}"),
    ("ppl", "perplexity", "{:.3f}"),
    ("ppl delta %", "perplexity_delta_pct", "{:+.2f}"),
    ("greedy agree", "token_agreement", "{:.3f}"),
    ("decode tok/s", "decode_tokens_per_s", "{:.1f}"),
    ("first token ms", "first_token_ms", "{:.1f}"),
]


def _row(name: str, backend: str, weight_bytes: int, quality: dict, speed: dict) -> dict:
    return {
        "artifact": name,
        "backend": backend,
        "weights_mb": weight_bytes / 1e6,
        "perplexity": quality.get("perplexity"),
        "perplexity_delta_pct": quality.get("perplexity_delta_pct"),
        "token_agreement": quality.get("token_agreement"),
        "decode_tokens_per_s": speed.get("decode_tokens_per_s"),
        "first_token_ms": speed.get("first_token_ms"),
    }


def compare_artifacts(folder: str | Path, model: str | None = None) -> dict[str, list[dict]]:
    """Rows per source model: first the source itself, then each artifact under `folder`, smallest first."""
    by_source: dict[str, list[dict]] = {}
    for path in list_artifacts(folder):
        meta = read_metadata(path)
        source = meta["source_model"]
        if model and model not in (source, Path(source).name, Path(source).parent.name):
            continue
        rows = by_source.setdefault(source, [])
        quality = meta.get("quality", {})
        if not rows and quality:
            rows.append(_row(f"{Path(source).name} (source, fp32)", "torch", meta.get("source_weight_bytes", 0),
                             {"perplexity": quality.get("source_perplexity"), "perplexity_delta_pct": 0.0,
                              "token_agreement": 1.0}, meta.get("source_speed", {})))
        rows.append(_row(path.name, meta["backend"], meta["weight_bytes"], quality, meta.get("speed", {})))
    for rows in by_source.values():
        rows[1:] = sorted(rows[1:], key=lambda r: r["weights_mb"])
    if not by_source:
        raise FileNotFoundError(f"no artifacts (folders with quantization.json) under {folder}"
                                + (f" for model {model!r}" if model else ""))
    return by_source


def format_table(rows: list[dict]) -> str:
    cells = [[h for h, _, _ in COLUMNS]]
    for row in rows:
        cells.append(["-" if row[k] is None else fmt.format(row[k]) for _, k, fmt in COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = [" | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(by_source: dict[str, list[dict]], png: str | Path) -> Path:
    """Scatter of weights MB (x) against perplexity delta % (y), one point per artifact, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for source, rows in by_source.items():
        points = [r for r in rows if r["perplexity_delta_pct"] is not None]
        ax.scatter([r["weights_mb"] for r in points], [r["perplexity_delta_pct"] for r in points],
                   label=Path(source).name)
        for r in points:
            ax.annotate(r["artifact"], (r["weights_mb"], r["perplexity_delta_pct"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("weights on disk (MB)")
    ax.set_ylabel("perplexity vs source (%)")
    ax.set_title("size vs quality of quantized artifacts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
