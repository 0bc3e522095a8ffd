"""Data pipeline at scale: records/s and peak RSS on generated JSONL inputs of growing size.

    python -m benchmarks.data_pipeline                       # 100MB and 1GB, the issue-3 figures
    python -m benchmarks.data_pipeline --sizes 10MB,100MB    # quicker
    python -m benchmarks.data_pipeline --render benchmarks/results/data_pipeline.json

Each size runs the full pipeline (every redaction, the default filters, exact + near dedup, 0.8/0.1/0.1
splits, messages export) in a fresh subprocess, so its peak RSS is its own. The input is generated from a
seed: multi-turn conversations of about 2.5 KB with some PII, 2% exact and 2% near duplicates and 0.1%
broken lines. The claim to check: peak RSS stays flat while the input grows 10x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "data_pipeline.json"
_UNITS = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB)\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r} must look like 100MB or 1GB")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _sentence_pool(rng: random.Random, n: int = 4000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ra", "te", "su", "no", "vi", "de", "pa", "shi", "gu", "ben", "tor", "al"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(3000)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 18))).capitalize() + "." for _ in range(n)]


_PII = ["Mail me at user{i}@example.com.", "Call +1 415-555-{p:04d} after five.", "See https://example.org/p/{i}.",
        "The host is 10.{a}.{b}.7 today.", "My card is 4111 1111 1111 1111."]


def _conversation(rng: random.Random, pool: list[str], i: int) -> dict:
    messages = []
    for turn in range(rng.randint(1, 3)):
        question = " ".join(rng.sample(pool, 2)) + f" Case {i}-{turn}?"
        answer = " ".join(rng.sample(pool, rng.randint(6, 12)))
        if rng.random() < 0.2:
            answer += " " + rng.choice(_PII).format(i=i, p=i % 10_000, a=i % 250, b=turn)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "metadata": {"id": i, "augmented": rng.random() < 0.9}}


def generate(path: Path, size: int, seed: int = 0) -> int:
    """Write about `size` bytes of JSONL; returns the number of lines. Never holds more than one record."""
    rng = random.Random(seed)
    pool = _sentence_pool(rng)
    written = lines = 0
    previous: dict | None = None
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            roll = rng.random()
            if previous is not None and roll < 0.02:
                record = previous  # exact duplicate
            elif previous is not None and roll < 0.04:
                record = json.loads(json.dumps(previous))
                record["messages"][-1]["content"] += " Thanks."  # near duplicate
            else:
                record = _conversation(rng, pool, lines)
            line = json.dumps(record) + "\n"
            if rng.random() < 0.001:
                line = line[: len(line) // 2] + "\n"  # a broken line, to be rejected
            f.write(line)
            written += len(line.encode())
            lines += 1
            previous = record
    return lines


def _measure(input_path: str, output_dir: str) -> dict:
    """Runs in the child process: the pipeline once, then this process's own peak RSS."""
    import finetune.data

    rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cfg = finetune.data.DataPipelineConfig.from_dict({
        "ingest": {"paths": [input_path]},
        "export": {"output_dir": output_dir, "min_conversations": 0},
    })
    start = time.perf_counter()
    result = finetune.data.prepare_dataset(cfg)
    seconds = time.perf_counter() - start
    stats = result.stats
    return {
        "seconds": round(seconds, 2),
        "records_read": stats["records_read"],
        "records_per_s": round(stats["records_read"] / seconds, 1),
        "mb_per_s": round(os.path.getsize(input_path) / (1 << 20) / seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_import_mb": round(rss_after_import, 1),
        "records_written": stats["records_written"],
        "records_rejected": stats["records_rejected"],
        "accounting_ok": stats["accounting_ok"],
        "duplicates_removed": stats["duplicates_removed"],
        "redactions": stats["redactions"],
    }


def run_size(size: int, workdir: Path, seed: int) -> dict:
    data = workdir / f"input_{size}.jsonl"
    out = workdir / f"out_{size}"
    start = time.perf_counter()
    lines = generate(data, size, seed)
    generate_s = time.perf_counter() - start
    code = ("import json, sys; from benchmarks.data_pipeline import _measure; "
            "print(json.dumps(_measure(sys.argv[1], sys.argv[2])))")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", code, str(data), str(out)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline run on {data} failed:\n{proc.stderr[-3000:]}")
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"input_bytes": os.path.getsize(data), "input_lines": lines, "generate_s": round(generate_s, 1),
            **measured}


def machine() -> dict:
    import datasketch
    import phonenumbers

    from finetune.hardware import detect_hardware

    hw = detect_hardware()
    return {"cpu_model": hw.cpu_model, "isa": hw.isa, "cpu_flags": sorted(hw.flags), "usable_cores": hw.usable_cores,
            "ram_gb": _ram_gb(),
            "python": platform.python_version(), "datasketch": datasketch.__version__,
            "phonenumbers": phonenumbers.__version__, "platform": platform.platform()}


def _ram_gb() -> float | None:
    from finetune.hardware import memory_gib

    total = memory_gib()["total"]
    return None if total is None else round(total, 1)


def render(report: dict) -> str:
    m = report["machine"]
    head = (f"data pipeline on {m['cpu_model']} ({m['usable_cores']} usable cores, {m['ram_gb']} GB RAM), "
            f"Python {m['python']}, 1 process")
    cols = ["input", "records", "seconds", "records/s", "MB/s", "peak RSS MB", "RSS after import MB",
            "written", "rejected", "dups exact/near", "accounting"]
    rows = []
    for r in report["runs"]:
        d = r["duplicates_removed"]
        rows.append([f"{r['input_bytes'] / (1 << 20):.0f} MB", str(r["records_read"]), f"{r['seconds']:.1f}",
                     f"{r['records_per_s']:.0f}", f"{r['mb_per_s']:.2f}", f"{r['peak_rss_mb']:.0f}",
                     f"{r['rss_after_import_mb']:.0f}", str(r["records_written"]), str(r["records_rejected"]),
                     f"{d['exact']}/{d['near']}", "ok" if r["accounting_ok"] else "MISMATCH"])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    table = [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]
    runs = report["runs"]
    if len(runs) >= 2:
        growth = runs[-1]["peak_rss_mb"] - runs[0]["peak_rss_mb"]
        ratio = runs[-1]["input_bytes"] / runs[0]["input_bytes"]
        table.append(f"input x{ratio:.1f} -> peak RSS {growth:+.0f} MB")
    return "\n".join([head, *table])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100MB,1GB", help="comma-separated input sizes (default 100MB,1GB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where inputs/outputs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated inputs and outputs")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"result JSON (default {RESULTS})")
    parser.add_argument("--render", type=Path, help="only print the table of an existing result JSON")
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="neuralchat-data-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        runs = []
        for size in sizes:
            runs.append(run_size(size, workdir, args.seed))
            print(f"{size / (1 << 20):.0f} MB: {runs[-1]['records_per_s']:.0f} records/s, "
                  f"peak RSS {runs[-1]['peak_rss_mb']:.0f} MB", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"benchmark": "data_pipeline", "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(),
              "config": "defaults: all redactions, role_order/min_turns/repetition filters, exact+near dedup, "
                        "0.8/0.1/0.1 splits, messages export", "runs": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
