"""Data pipeline at scale: records/s, MB/s, seconds per stage and peak RSS on generated JSONL inputs.

    python -m benchmarks.data_pipeline                       # 100MB and 1GB
    python -m benchmarks.data_pipeline --sizes 10MB,100MB    # quicker
    python -m benchmarks.data_pipeline --sizes 100MB --compare-datatrove   # datatrove on the same input too
    python -m benchmarks.data_pipeline --render benchmarks/results/data_pipeline.json

Each size runs the full pipeline (every redaction, the default filters, exact + near dedup, 0.8/0.1/0.1
splits, messages export) in a fresh subprocess with `--workers` worker processes (default: one per core), so its
peak RSS is its own; the table gives the parent's peak RSS and the peak of all its processes together, and the
seconds of each stage as the pipeline measured them. The input is generated from a seed: multi-turn conversations
of about 1.8 KB with some PII, 2% exact and 2% near duplicates and 0.1% broken lines; it goes under the temp dir
and is deleted after each size. The claims to check: peak RSS stays flat while the input grows 10x, and
1 GB takes at most 2 minutes on 2 cores.

`--compare-datatrove` (needs `pip install datatrove`) also runs the same input through Hugging Face's datatrove:
JsonlReader, its PIIFormatter and its 4-stage MinHash dedup with the local executor and `--datatrove-tasks`
tasks, and prints the ratio. Every run records the load average before and after it: on a shared machine the
figures are only as good as that.
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


def _measure(input_path: str, output_dir: str, workers: int | None, max_tokens: int | None) -> dict:
    """Runs in the child process: the pipeline once, then this process's own peak RSS and its workers'."""
    import finetune.data

    rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cfg = finetune.data.DataPipelineConfig.from_dict({
        "ingest": {"paths": [input_path]},
        "export": {"output_dir": output_dir, "min_conversations": 0},
        "filter": {"max_tokens": max_tokens},
        "workers": workers,
    })
    start = time.perf_counter()
    result = finetune.data.prepare_dataset(cfg)
    seconds = time.perf_counter() - start
    own, workers_usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + workers_usage.ru_utime + workers_usage.ru_stime  # since this child began
    stats = result.stats
    return {
        "seconds": round(seconds, 2),
        "workers": result.timings["workers"],
        "records_read": stats["records_read"],
        "records_per_s": round(stats["records_read"] / seconds, 1),
        "mb_per_s": round(os.path.getsize(input_path) / (1 << 20) / seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "rss_after_import_mb": round(rss_after_import, 1),
        "records_written": stats["records_written"],
        "records_rejected": stats["records_rejected"],
        "accounting_ok": stats["accounting_ok"],
        "duplicates_removed": stats["duplicates_removed"],
        "redactions": stats["redactions"],
        "stage_seconds": {k: round(v, 2) for k, v in result.timings["stages"].items()},
        "stage_cpu_seconds": {k: round(v, 2) for k, v in result.timings["cpu"].items()},
        "cpu_seconds": round(cpu, 1),
        "mb_per_cpu_s": round(os.path.getsize(input_path) / (1 << 20) / cpu, 2),
    }


def _measure_datatrove(shards: str, work: str, tasks: int) -> dict:
    """Runs in the child process: the same work through datatrove, local executor, `tasks` tasks and workers.

    JsonlReader (an adapter joins a conversation's messages into the document text) -> PIIFormatter (its e-mail
    and IP replacement) -> JsonlWriter of the redacted documents -> MinhashDedupSignature; then its buckets,
    cluster and filter stages; the filter writes the kept documents. MinHash set up as ours: word 3-grams, 8 bands
    of 16 rows of 32-bit hashes (ours: datasketch's optimum for threshold 0.85 with 128 permutations).
    """
    try:
        from datatrove.executor import LocalPipelineExecutor
        from datatrove.pipeline.dedup import (
            MinhashDedupBuckets,
            MinhashDedupCluster,
            MinhashDedupFilter,
            MinhashDedupSignature,
        )
        from datatrove.pipeline.dedup.minhash import MinhashConfig
        from datatrove.pipeline.formatters import PIIFormatter
        from datatrove.pipeline.readers import JsonlReader
        from datatrove.pipeline.writers import JsonlWriter
        from datatrove.utils.hashing import HashConfig
        from datatrove.utils.word_tokenizers import WordTokenizer
    except ImportError as err:
        raise ImportError(f"--compare-datatrove needs datatrove ({err}). Install it with: pip install datatrove "
                          "-c constraints.txt") from err

    def adapter(self, data: dict, path: str, id_in_file: int | str) -> dict:
        messages = data.get("messages") or []
        text = "\n".join(m.get("content", "") for m in messages if isinstance(m, dict))
        return {"text": text, "id": f"{path}/{id_in_file}", "metadata": {}}

    class Words(WordTokenizer):  # our shingles' words; datatrove's English tokenizer would need spaCy
        def word_tokenize(self, text: str) -> list[str]:
            return re.findall(r"\w+", text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in re.finditer(r"\w+", text)]

    config = MinhashConfig(hash_config=HashConfig(precision=32), n_grams=3, num_buckets=8, hashes_per_bucket=16)
    w = Path(work)
    logs = str(w / "logs")
    signatures = MinhashDedupSignature(output_folder=str(w / "signatures"), config=config, language=Words())
    signatures._hash_func = _xxhash32_of_text
    start = time.perf_counter()
    LocalPipelineExecutor(pipeline=[
        JsonlReader(shards, adapter=adapter),
        PIIFormatter(),
        JsonlWriter(str(w / "redacted")),
        signatures,
    ], tasks=tasks, workers=tasks, logging_dir=f"{logs}/signatures").run()
    LocalPipelineExecutor(pipeline=[
        MinhashDedupBuckets(input_folder=str(w / "signatures"), output_folder=str(w / "buckets"), config=config),
    ], tasks=config.num_buckets, workers=tasks, logging_dir=f"{logs}/buckets").run()
    LocalPipelineExecutor(pipeline=[
        MinhashDedupCluster(input_folder=str(w / "buckets"), output_folder=str(w / "remove_ids"), config=config),
    ], tasks=1, logging_dir=f"{logs}/clusters").run()
    LocalPipelineExecutor(pipeline=[
        JsonlReader(str(w / "redacted")),
        MinhashDedupFilter(input_folder=str(w / "remove_ids"), exclusion_writer=JsonlWriter(str(w / "removed"))),
        JsonlWriter(str(w / "output")),
    ], tasks=tasks, workers=tasks, logging_dir=f"{logs}/filter").run()
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "documents_written": _count_lines(w / "output"),
            "near_duplicates_removed": _count_lines(w / "removed")}


def _xxhash32_of_text(text: str) -> int:
    """datatrove 0.10 hands xxhash a str, which xxhash 4 refuses; its hash of the UTF-8 bytes."""
    import xxhash

    return xxhash.xxh32_intdigest(text.encode())


def _count_lines(folder: Path) -> int:
    import gzip

    return sum(sum(1 for _ in gzip.open(f)) for f in folder.glob("*.jsonl.gz"))


def _run_child(call: str, args: list[str]) -> dict:
    """`benchmarks.data_pipeline.<call>(*args)` in a fresh process; its result plus the peak RSS of its whole
    process tree (itself and its workers, summed, sampled every 0.2 s)."""
    import psutil

    code = (f"import json, sys; from benchmarks.data_pipeline import {call}; "
            f"print(json.dumps({call}(*json.loads(sys.argv[1]))))")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(args)], stdout=out, stderr=err, env=env)
        peak = 0.0
        parent = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(_rss(p) for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{call}{tuple(args)} failed:\n{err.read()[-3000:]}")
        result = json.loads(out.read().strip().splitlines()[-1])
    return {**result, "tree_peak_rss_mb": round(peak / (1 << 20), 1)}


def _rss(p) -> int:
    try:
        return p.memory_info().rss
    except Exception:  # the process ended between listing and reading
        return 0


def _shard(data: Path, folder: Path, n: int) -> None:
    """The input cut into n files of whole lines: datatrove gives each task whole files."""
    folder.mkdir(parents=True, exist_ok=True)
    size = data.stat().st_size
    with open(data, "rb") as f:
        for i in range(n):
            chunk = f.read(size // n) if i < n - 1 else f.read()
            if i < n - 1:
                chunk += f.readline()
            (folder / f"part-{i:03d}.jsonl").write_bytes(chunk)


def run_size(size: int, workdir: Path, seed: int, workers: int | None, max_tokens: int | None,
             datatrove_tasks: int | None) -> dict:
    data = workdir / f"input_{size}.jsonl"
    out = workdir / f"out_{size}"
    start = time.perf_counter()
    lines = generate(data, size, seed)
    generate_s = time.perf_counter() - start
    run = {"input_bytes": os.path.getsize(data), "input_lines": lines, "generate_s": round(generate_s, 1)}
    load_before = os.getloadavg()
    run.update(_run_child("_measure", [str(data), str(out), workers, max_tokens]))
    run["load_average"] = [round(x, 2) for x in load_before + os.getloadavg()]  # 1/5/15 min, before and after
    shutil.rmtree(out, ignore_errors=True)
    if datatrove_tasks:
        shards, dt_work = workdir / f"shards_{size}", workdir / f"datatrove_{size}"
        _shard(data, shards, datatrove_tasks * 4)
        load_before = os.getloadavg()
        dt = _run_child("_measure_datatrove", [str(shards), str(dt_work), datatrove_tasks])
        dt["load_average"] = [round(x, 2) for x in load_before + os.getloadavg()]
        dt["records_per_s"] = round(lines / dt["seconds"], 1)
        dt["mb_per_s"] = round(run["input_bytes"] / (1 << 20) / dt["seconds"], 2)
        dt["tasks"] = datatrove_tasks
        run["datatrove"] = dt
        shutil.rmtree(shards, ignore_errors=True)
        shutil.rmtree(dt_work, ignore_errors=True)
    data.unlink()
    return run


def machine() -> dict:
    import datasketch
    import phonenumbers

    from finetune.hardware import read_cpuinfo

    model, flags, _ = read_cpuinfo()
    return {"cpu_model": model, "usable_cores": len(os.sched_getaffinity(0)), "ram_gb": _ram_gb(),
            "python": platform.python_version(), "datasketch": datasketch.__version__,
            "phonenumbers": phonenumbers.__version__, "orjson": _version("orjson"),
            "datatrove": _version("datatrove"), "platform": platform.platform()}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _ram_gb() -> float | None:
    from finetune.hardware import memory_gib

    total = memory_gib()["total"]
    return None if total is None else round(total, 1)


def render(report: dict) -> str:
    m = report["machine"]
    head = (f"data pipeline on {m['cpu_model']} ({m['usable_cores']} usable cores, {m['ram_gb']} GB RAM), "
            f"Python {m['python']}")
    runs = report["runs"]
    rows = []
    for r in runs:
        d = r["duplicates_removed"]
        rows.append([f"{r['input_bytes'] / (1 << 20):.0f} MB", str(r.get("workers", 1)), str(r["records_read"]),
                     f"{r['seconds']:.1f}", f"{r['records_per_s']:.0f}", f"{r['mb_per_s']:.2f}",
                     _num(r.get("mb_per_cpu_s"), ".2f"), f"{r['peak_rss_mb']:.0f}",
                     _num(r.get("worker_peak_rss_mb")), _num(r.get("tree_peak_rss_mb")),
                     f"{r['rss_after_import_mb']:.0f}",
                     str(r["records_written"]), str(r["records_rejected"]), f"{d['exact']}/{d['near']}",
                     "ok" if r["accounting_ok"] else "MISMATCH", _load(r)])
    lines = [head, *_table(["input", "workers", "records", "seconds", "records/s", "MB/s", "MB per CPU s",
                            "peak RSS MB", "worker peak RSS MB", "all processes MB", "RSS after import MB", "written",
                            "rejected", "dups exact/near",
                            "accounting", "load avg"], rows)]
    if len(runs) >= 2:
        growth = runs[-1]["peak_rss_mb"] - runs[0]["peak_rss_mb"]
        ratio = runs[-1]["input_bytes"] / runs[0]["input_bytes"]
        line = f"input x{ratio:.1f} -> peak RSS {growth:+.0f} MB"
        if runs[0].get("worker_peak_rss_mb") and runs[-1].get("worker_peak_rss_mb"):
            line += f" (parent), {runs[-1]['worker_peak_rss_mb'] - runs[0]['worker_peak_rss_mb']:+.0f} MB (a worker)"
        lines.append(line)
    staged = [r for r in runs if r.get("stage_seconds")]
    if staged:
        # CPU seconds where the run has them (a shared machine stretches wall time, not CPU time), else wall
        key = "stage_cpu_seconds" if all(r.get("stage_cpu_seconds") for r in staged) else "stage_seconds"
        stages = list(staged[0][key])
        cols = ["stage"] + [f"{r['input_bytes'] / (1 << 20):.0f} MB {'CPU ' if 'cpu' in key else ''}s"
                            for r in staged] + ["share"]
        last = staged[-1][key]
        total = sum(last.values()) or 1
        rows = [[s] + [f"{r[key].get(s, 0):.2f}" for r in staged] + [f"{last.get(s, 0) / total:.0%}"]
                for s in stages]
        rows.append(["sum"] + [f"{sum(r[key].values()):.2f}" for r in staged] + ["100%"])
        if "cpu" in key:
            rows.append(["CPU of all processes"] + [_num(r.get("cpu_seconds")) for r in staged] + [""])
        rows.append(["wall"] + [f"{r['seconds']:.2f}" for r in staged] + [""])
        what = "CPU seconds" if "cpu" in key else "seconds"
        lines += ["", f"{what} per stage, summed over the worker processes and the parent:", *_table(cols, rows)]
    compared = [r for r in runs if r.get("datatrove")]
    if compared:
        rows = []
        for r in compared:
            dt = r["datatrove"]
            d = r["duplicates_removed"]
            rows.append([f"{r['input_bytes'] / (1 << 20):.0f} MB", f"ours ({r.get('workers') or 'no'} workers)",
                         f"{r['seconds']:.1f}", f"{r['records_per_s']:.0f}", f"{r['mb_per_s']:.2f}",
                         _num(r.get("tree_peak_rss_mb")), f"{d['near']} (+{d['exact']} exact)", _load(r)])
            rows.append(["", f"datatrove ({dt['tasks']} tasks)", f"{dt['seconds']:.1f}",
                         f"{dt['records_per_s']:.0f}", f"{dt['mb_per_s']:.2f}", _num(dt.get("tree_peak_rss_mb")),
                         str(dt["near_duplicates_removed"]), _load(dt)])
            rows.append(["", "ours / datatrove", "", f"{r['records_per_s'] / dt['records_per_s']:.2f}x",
                         f"{r['mb_per_s'] / dt['mb_per_s']:.2f}x", "", "", ""])
        lines += ["", "side by side with datatrove on the same input (records/s: records read per second of wall):",
                  *_table(["input", "pipeline", "seconds", "records/s", "MB/s", "peak RSS MB (all processes)",
                           "near-duplicates removed", "load avg"], rows)]
    return "\n".join(lines)


def _num(x, fmt: str = ".0f") -> str:
    return "-" if x is None else format(x, fmt)


def _load(r: dict) -> str:
    load = r.get("load_average")
    return "-" if not load else f"{load[0]:.1f}->{load[3]:.1f}"


def _table(cols: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100MB,1GB", help="comma-separated input sizes (default 100MB,1GB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None,
                        help="the pipeline's workers (default: one per core available)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="also count tokens with the default model's tokenizer (filter.max_tokens)")
    parser.add_argument("--compare-datatrove", action="store_true",
                        help="run the same input through datatrove too (needs: pip install datatrove)")
    parser.add_argument("--datatrove-tasks", type=int, default=2, help="datatrove's tasks and workers (default 2)")
    parser.add_argument("--workdir", type=Path, default=None, help="where inputs/outputs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated inputs and outputs")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"result JSON (default {RESULTS})")
    parser.add_argument("--render", type=Path, help="only print the table of an existing result JSON")
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    if args.compare_datatrove and _version("datatrove") is None:
        print("error: --compare-datatrove needs datatrove: pip install datatrove -c constraints.txt", file=sys.stderr)
        return 2
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="neuralchat-data-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        runs = []
        for size in sizes:
            runs.append(run_size(size, workdir, args.seed, args.workers, args.max_tokens,
                                 args.datatrove_tasks if args.compare_datatrove else None))
            print(f"{size / (1 << 20):.0f} MB: {runs[-1]['records_per_s']:.0f} records/s, "
                  f"peak RSS {runs[-1]['peak_rss_mb']:.0f} MB", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"benchmark": "data_pipeline", "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(),
              "config": "defaults: all redactions, role_order/min_turns/repetition filters, exact+near dedup, "
                        "0.8/0.1/0.1 splits, messages export"
                        + (f", max_tokens={args.max_tokens}" if args.max_tokens else ""), "runs": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
