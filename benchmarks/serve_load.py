"""Load test of the chat server: tokens/s and p50/p99 latency at 1, 4, 8 and 16 concurrent streams.

Loopback only and bounded: a fixed number of requests per level and a deadline for the whole run.

    python -m benchmarks.serve_load                                   # starts a server on the embedded model
    python -m benchmarks.serve_load --config configs/server-openvino.yaml
    python -m benchmarks.serve_load --url http://127.0.0.1:8000       # an already running local server
    python -m benchmarks.serve_load --adapters 8 --concurrency 1,8    # LoRA adapters on one base: RSS, tokens/s

Method: one warmup request per level (excluded); each request streams with stream_options.include_usage, so
tokens are the server's own count; tokens/s is all completion tokens of a level over its wall time, beside the
bandwidth limit of that many streams (memory read GB/s measured in the run, the weight bytes the server reports). Every
conversation opens with its own tag, so a server that caches prompt prefixes cannot reuse another's prefill;
with --turns N each client goes on with N-1 follow-up questions that resend the conversation, as chat clients do,
and the follow-up turns' first-token latency is reported apart.
With --adapters N (torch backend) the command makes N LoRA adapters of the model with random weights (PEFT, the
fine-tunes' default targets and rank 8; speed and memory do not depend on what they learned), starts a server with 0,
1, 4 and N of them in turn (resident memory, RSS, of each after one request), and on the last one compares 8 streams
on one adapter with 8 streams spread over 4; saved as serve_adapters-*.json, beside the levels on the base.
With --replicas 1,2,3 the command starts that many servers on loopback ports behind nginx (the balancer config of
deploy/nginx, which the compose deployment uses; benchmarks/cluster.py) and measures one level of --streams streams
through the balancer for each count; each replica gets its share of the cores as OpenMP threads (cores // N, at
least 1: two processes of 2 threads on 2 cores fall below 1 tok/s), so replicas beyond the core count cannot add
throughput, and the table prints that limit beside the measured speedup. --postgres also starts a private PostgreSQL
cluster that all replicas log to (chat_log.url), as in production. Saved as serve_replicas-*.json.
Results are saved as JSON under benchmarks/results/ and the table is printed from that JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a CPU cache works, step by step, for a beginner.",
    "Describe a walk through a busy market in the morning.",
    "Give me ten ideas for a weekend trip and explain each one.",
]
FOLLOW_UPS = ["Make it shorter.", "Now explain why.", "Give one example.", "Summarise that in one sentence."]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with few samples p99 is the maximum, which is what it should say."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class RequestFailed(Exception):
    """A request the server answered with an error status or an error event."""


def _failure(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"


def one_request(url: str, model: str, messages: list[dict], max_tokens: int) -> dict:
    import httpx

    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    usage = {}
    reply = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as response:
        if response.is_error:
            raise RequestFailed(f"HTTP {response.status_code}: {response.read().decode(errors='replace')[:300]}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("error"):  # the server gave up mid-stream
                raise RequestFailed(f"error event: {json.dumps(event['error'])[:300]}")
            if event.get("usage"):
                usage = event["usage"]
            choices = event.get("choices") or []
            content = choices[0].get("delta", {}).get("content") if choices else None
            if content:
                first = first or time.perf_counter()
                reply.append(content)
    end = time.perf_counter()
    return {
        "latency_s": end - start,
        "ttft_s": (first or end) - start,
        "completion_tokens": usage.get("completion_tokens", 0),
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "reply": "".join(reply),
    }


def run_level(url: str, model: str | list[str], concurrency: int, requests: int, max_tokens: int, deadline: float,
              turns: int = 1) -> dict:
    """One level of `concurrency` streams; `model` may be a list, conversation i then names model[i % len]."""
    import httpx

    models = [model] if isinstance(model, str) else list(model)
    failures = (httpx.HTTPError, RequestFailed, json.JSONDecodeError)
    warmup_error = None
    try:
        one_request(url, models[0], [{"role": "user", "content": f"(warmup {concurrency}) {PROMPTS[0]}"}],
                    max_tokens)
    except failures as err:
        warmup_error = _failure(err)
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()

    def task(i: int):
        messages = [{"role": "user", "content": f"(conversation {concurrency}.{i}) {PROMPTS[i % len(PROMPTS)]}"}]
        for turn in range(turns):
            if time.monotonic() > deadline:
                return
            try:
                result = one_request(url, models[i % len(models)], messages, max_tokens) | {"turn": turn}
            except failures as err:  # counted, and the conversation ends: its next turn would lack the reply
                with lock:
                    errors.append(_failure(err))
                return
            with lock:
                results.append(result)
            messages += [{"role": "assistant", "content": result["reply"]},
                         {"role": "user", "content": FOLLOW_UPS[turn % len(FOLLOW_UPS)]}]

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(task, range(requests)))
    wall = time.perf_counter() - start
    latencies = [r["latency_s"] for r in results]
    ttfts = [r["ttft_s"] for r in results if r["turn"] == 0]
    later = [r for r in results if r["turn"] > 0]
    tokens = sum(r["completion_tokens"] for r in results)
    followups = {}
    if later:
        later_ttfts = [r["ttft_s"] for r in later]
        followups = {
            "followup_ttft_p50_s": round(statistics.median(later_ttfts), 3),
            "followup_ttft_p99_s": round(percentile(later_ttfts, 99), 3),
            "followup_prompt_tokens_mean": round(statistics.mean(r["prompt_tokens"] for r in later), 1),
        }
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "requests_planned": requests * turns,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        **({"warmup_error": warmup_error} if warmup_error else {}),
        "completion_tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2) if wall > 0 else 0.0,
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p99_s": round(percentile(latencies, 99), 3) if latencies else None,
        "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "ttft_p99_s": round(percentile(ttfts, 99), 3) if ttfts else None,
        "mean_completion_tokens": round(tokens / len(results), 1) if results else 0,
        "turns": turns,
        **({"models": models} if len(models) > 1 else {}),
        **followups,
    }


def render_table(report: dict) -> str:
    head = f"model={report['model']} backend={report['backend']} max_tokens={report['max_tokens']}"
    if report.get("load_average_1m") is not None:
        head += f" load_average_1m={report['load_average_1m']}->{report.get('load_average_1m_end')}"
    lines = [
        head,
        "| streams | requests | errors | tokens/s | of bandwidth limit | p50 latency (s) | p99 latency (s) | "
        "p50 TTFT (s) | p99 TTFT (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    followups = any("followup_ttft_p50_s" in r for r in report["levels"])
    if followups:
        lines[1] += " follow-up p50 TTFT (s) | follow-up p99 TTFT (s) | follow-up prompt tokens |"
        lines[2] += "---|---|---|"
    for r in report["levels"]:
        line = (f"| {r['concurrency']} | {r['requests']} | {r.get('errors', '-')} | {r['tokens_per_s']} | "
                f"{_fraction(r)} | {r['latency_p50_s']} | "
                f"{r['latency_p99_s']} | {r['ttft_p50_s']} | {r['ttft_p99_s']} |")
        if followups:
            line += (f" {r.get('followup_ttft_p50_s', '-')} | {r.get('followup_ttft_p99_s', '-')} | "
                     f"{r.get('followup_prompt_tokens_mean', '-')} |")
        lines.append(line)
    for r in report["levels"]:
        for message in r.get("error_examples", []):
            lines.append(f"{r['concurrency']} streams, failed: {message}")
    if report.get("adapters"):
        lines += ["", render_adapters(report["adapters"])]
    return "\n".join(lines)


def render_adapters(adapters: dict) -> str:
    """The LoRA rows: the server's memory by adapters loaded, then tokens/s on one adapter and spread over several."""
    memory = adapters.get("memory", [])
    base = next((m["rss_mb"] for m in memory if m["adapters"] == 0), None)
    lines = [f"LoRA adapters on one base (rank {adapters['rank']}, targets {adapters['targets']}); one copy of the "
             f"base's weights is {adapters['base_weight_mb']} MB",
             "| adapters loaded | server RSS (MB) | peak RSS (MB) | RSS over 0 adapters (MB) |", "|---|---|---|---|"]
    for m in memory:
        more = "-" if base is None or m["rss_mb"] is None else round(m["rss_mb"] - base, 1)
        lines.append(f"| {m['adapters']} | {m['rss_mb']} | {m['peak_rss_mb']} | {more} |")
    lines += ["", "| streams | adapters | requests | errors | tokens/s | p50 latency (s) | p99 latency (s) | "
                  "p50 TTFT (s) | p99 TTFT (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in adapters.get("levels", []):
        lines.append(f"| {r['concurrency']} | {len(r.get('models') or [1])} | {r['requests']} | {r['errors']} | "
                     f"{r['tokens_per_s']} | {r['latency_p50_s']} | {r['latency_p99_s']} | {r['ttft_p50_s']} | "
                     f"{r['ttft_p99_s']} |")
        for message in r.get("error_examples", []):
            lines.append(f"{r['concurrency']} streams over {len(r.get('models') or [1])} adapters, failed: {message}")
    return "\n".join(lines)


def _fraction(level: dict) -> str:
    fraction = level.get("fraction_of_decode_limit")
    return "-" if fraction is None else f"{fraction:.3g}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, overrides: list[str] = ()) -> tuple[subprocess.Popen, str]:
    """A server on a free loopback port, as `args` say; `overrides` are its `key=value` settings."""
    proc, url, log = launch_server(args, overrides)
    wait_ready(proc, url, log)
    return proc, url


def launch_server(args, overrides: list[str] = (), host: str = "127.0.0.1", port: int | None = None,
                  wrap: list[str] = (), chat_log_url: str | None = None, env: dict | None = None
                  ) -> tuple[subprocess.Popen, str, str]:
    """Start a server as `args` say (config, model, backend) on host:port (default: a free loopback port), its
    command prefixed by `wrap` (e.g. `ip netns exec NS`), without a conversation log unless `chat_log_url` names
    one; returns (process, url, its output file) at once: wait_ready waits for it."""
    port = port or _free_port()
    cmd = [*wrap, sys.executable, "-m", "neural_chat_app", "serve", "--host", host, "--port", str(port),
           "--log-level", "warning"]
    cmd += [f"chat_log.url={chat_log_url}"] if chat_log_url else ["--no-log"]
    if args.config:
        cmd += ["--config", args.config]
    if args.model:
        cmd += ["--model", args.model]
    if args.backend:
        cmd += ["--backend", args.backend]
    cmd += list(overrides)
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = tempfile.NamedTemporaryFile("w", prefix="serve_load-", suffix=".log", delete=False)
    # its own session: a server started in a network namespace is ended with what `ip netns exec` started
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://{host}:{port}", log.name


def wait_ready(proc: subprocess.Popen, url: str, log: str, timeout: float = 600) -> None:
    """Until the server at `url` answers /health; RuntimeError naming its output file if it exits or times out."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}:\n"
                               f"{Path(log).read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not start in {timeout:.0f} s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def measure_replicas(args, counts: list[int], streams: int) -> dict:
    """For each count N: N servers behind nginx, `streams` streams through it (module docstring); returns the
    report's "replicas" section."""
    import httpx

    from benchmarks import cluster

    cores = _cores()
    deadline = time.monotonic() + args.time_limit
    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        log_url = stack.enter_context(cluster.postgres()) if args.postgres else None
        for n in counts:
            if time.monotonic() > deadline:
                break
            threads = args.threads or max(1, cores // n)
            launched = []
            try:
                for _ in range(n):
                    launched.append(launch_server(args, chat_log_url=log_url, env={"OMP_NUM_THREADS": str(threads)}))
                for proc, url, log in launched:
                    wait_ready(proc, url, log)
                health = httpx.get(launched[0][1] + "/health", timeout=10).json()
                model = health["model"]
                upstreams = [urlparse(url).netloc for _, url, _ in launched]
                with tempfile.TemporaryDirectory(prefix="serve-nginx-") as folder, \
                        cluster.nginx(upstreams, Path(folder)) as balancer:
                    level = run_level(balancer, model, streams, args.requests or 2 * streams, args.max_tokens,
                                      deadline, args.turns)
            finally:
                for proc, _, _ in launched:
                    stop_server(proc)
            rows.append({"replicas": n, "threads_per_replica": threads, **level})
            print(f"{n} replicas: {level['tokens_per_s']} tokens/s ({level['errors']} errors)", flush=True)
    add_scaling(rows, cores)
    return {"cores": cores, "streams": streams, "postgres_log": bool(log_url), "levels": rows,
            "model": rows and health["model"], "backend": rows and health["backend"],
            "weight_bytes": rows and health.get("weight_bytes")}


def add_scaling(rows: list[dict], cores: int) -> None:
    """Each count's speedup over 1 replica (None without a 1-replica row) and its limit: the most N replicas can
    give over one is N, but never more than the cores they share."""
    base = next((r["tokens_per_s"] for r in rows if r["replicas"] == 1), None)
    for row in rows:
        row["scaling_limit"] = min(row["replicas"], cores)
        row["speedup"] = round(row["tokens_per_s"] / base, 2) if base else None


def render_replicas(section: dict) -> str:
    lines = [f"Replicas behind nginx (deploy/nginx), {section['streams']} streams, {section['cores']} cores"
             + (", every conversation logged to one PostgreSQL" if section.get("postgres_log") else ""),
             "| replicas | threads each | requests | errors | tokens/s | speedup over 1 | limit (cores) | "
             "p50 latency (s) | p99 latency (s) | p50 TTFT (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in section["levels"]:
        lines.append(f"| {r['replicas']} | {r['threads_per_replica']} | {r['requests']} | {r['errors']} | "
                     f"{r['tokens_per_s']} | {r['speedup'] if r['speedup'] is not None else '-'} | "
                     f"{r['scaling_limit']} | {r['latency_p50_s']} | {r['latency_p99_s']} | {r['ttft_p50_s']} |")
        for message in r.get("error_examples", []):
            lines.append(f"{r['replicas']} replicas, failed: {message}")
    return "\n".join(lines)


def random_lora_adapters(base: str | Path, out_dir: Path, count: int, rank: int = 8, std: float = 0.02,
                         seed: int = 0) -> list[Path]:
    """`count` LoRA adapters of the model at `base` (a local folder) with random weights, made with PEFT on the
    fine-tunes' default targets and saved as out_dir/adapter-<i> (adapter_config.json names `base`)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from finetune.families import lora_targets
    from finetune.models import load_model

    model = load_model(str(base), dtype=torch.float32)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=lora_targets(model, None), init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    generator = torch.Generator().manual_seed(seed)
    folders = []
    for i in range(count):
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * std)
        folder = Path(out_dir) / f"adapter-{i}"
        peft_model.save_pretrained(folder)
        folders.append(folder)
    return folders


def rss_mb(pid: int) -> tuple[float | None, float | None]:
    """(resident, peak resident) memory of process `pid` in MB, from /proc; (None, None) where there is none."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None, None
    values = {k: int(v.split()[0]) / 1024 for k, _, v in (line.partition(":") for line in status.splitlines())
              if k in ("VmRSS", "VmHWM")}
    return (round(values["VmRSS"], 1) if "VmRSS" in values else None,
            round(values["VmHWM"], 1) if "VmHWM" in values else None)


def measure_adapters(args, count: int, folder: Path) -> tuple[subprocess.Popen, str, dict]:
    """Make `count` random adapters of the served model under `folder`; start a server with 0, 1, 4 and `count` of
    them, reading its RSS after one request on its last adapter; the last server is left running for the levels.
    Returns (process, url, the report's "adapters" section)."""
    import httpx

    from finetune.models import resolve_model_path
    from neural_chat_app.server import load_settings

    model = args.model or load_settings(args.config).model
    base = resolve_model_path(model)  # the folder the server loads, which the adapters must name as their base
    rank = 8
    made = random_lora_adapters(base, folder, count, rank=rank)
    targets = json.loads((made[0] / "adapter_config.json").read_text())["target_modules"]
    memory = []
    proc = url = None
    for n in sorted({0, 1, 4, count}):
        if proc is not None:
            stop_server(proc)
        adapters = {f"adapter-{i}": str(made[i]) for i in range(n)}
        start = time.perf_counter()
        proc, url = start_server(args, [f"adapters={json.dumps(adapters)}", "discover_adapters=false"])
        start_s = time.perf_counter() - start
        one_request(url, f"adapter-{n - 1}" if n else "default", [{"role": "user", "content": PROMPTS[0]}],
                    args.max_tokens)
        rss, peak = rss_mb(proc.pid)
        memory.append({"adapters": n, "rss_mb": rss, "peak_rss_mb": peak, "start_s": round(start_s, 1)})
        print(f"{n} adapters: RSS {rss} MB (peak {peak} MB)", flush=True)
    weight_bytes = httpx.get(url + "/health", timeout=10).json().get("weight_bytes") or 0
    section = {"count": count, "rank": rank, "targets": sorted(targets), "base": str(base),
               "base_weight_mb": round(weight_bytes / 2**20, 1), "memory": memory, "levels": []}
    return proc, url, section


def main(argv: list[str] | None = None) -> int:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running server on this machine (loopback only)")
    parser.add_argument("--config", help="server YAML for the server this command starts")
    parser.add_argument("--model")
    parser.add_argument("--backend", choices=["auto", "torch", "openvino"])
    parser.add_argument("--concurrency", default="1,4,8,16", help="streams of each level on the model ('' none)")
    parser.add_argument("--requests", type=int, default=0, help="conversations per level (default: 2 x streams)")
    parser.add_argument("--turns", type=int, default=1, help="requests per conversation (follow-ups resend it)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--time-limit", type=float, default=900, help="seconds for the whole run")
    parser.add_argument("--output-dir", default=str(RESULTS))
    parser.add_argument("--replicas", default="", metavar="N,N",
                        help="replica counts to measure behind nginx, e.g. 1,2,3 (starts its own servers and nginx)")
    parser.add_argument("--streams", type=int, default=6, help="--replicas: streams of each count's level")
    parser.add_argument("--threads", type=int, default=0,
                        help="--replicas: OpenMP threads of each replica (default: cores // N, at least 1); on a "
                             "machine that other work shares, 1 avoids threads that wait on each other")
    parser.add_argument("--postgres", action="store_true",
                        help="--replicas: the replicas log every conversation to a private PostgreSQL cluster")
    parser.add_argument("--adapters", type=int, default=0, metavar="N",
                        help="also measure N (4-16) random LoRA adapters on the model: server RSS with 0, 1, 4 and N "
                             "loaded, tokens/s of 8 streams on one adapter and over 4 (starts its own servers)")
    args = parser.parse_args(argv)

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if (any(c < 1 or c > 32 for c in levels) or args.requests > 128 or args.max_tokens > 1024
            or not 1 <= args.turns <= 8):
        parser.error("bounded load only: streams 1-32, at most 128 conversations per level of 1-8 turns, "
                     "max_tokens <= 1024")
    if args.adapters and (args.url or not 4 <= args.adapters <= 16):
        parser.error("--adapters takes 4-16 and starts its own servers (no --url)")
    replicas = [int(n) for n in args.replicas.split(",") if n.strip()]
    if replicas:
        if args.url or args.adapters or any(n < 1 or n > 8 for n in replicas) or not 1 <= args.streams <= 32:
            parser.error("--replicas takes counts of 1-8 and --streams 1-32, and starts its own servers (no --url, "
                         "no --adapters)")
        return _main_replicas(args, replicas)
    from benchmarks.machine import memory_read_gbps

    bandwidth = memory_read_gbps()  # before the server starts: its engine would compete for the memory bus
    proc = None
    adapters = None
    scratch = tempfile.TemporaryDirectory(prefix="serve_adapters-")
    if args.url:
        if urlparse(args.url).hostname not in LOOPBACK:
            parser.error("--url must be a loopback address (127.0.0.1, localhost, ::1)")
        url = args.url.rstrip("/")
    elif args.adapters:
        proc, url, adapters = measure_adapters(args, args.adapters, Path(scratch.name))
    else:
        proc, url = start_server(args)
    try:
        health = httpx.get(url + "/health", timeout=10).json()
        deadline = time.monotonic() + args.time_limit
        report = {
            "benchmark": "serve_load",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "model": health["model"],
            "backend": health["backend"],
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "turns": args.turns,
            "prompts": PROMPTS,
            "follow_ups": FOLLOW_UPS[: args.turns - 1],
            "hardware": _hardware(),
            "memory_read_gbps": bandwidth,
            "load_average_1m": _load_average(),  # work besides this run on the cores: above their count, it slowed it
            "weight_bytes": health.get("weight_bytes"),  # what the server's model reads per decode step
            "levels": [],
        }
        if adapters is not None:  # first: what this run is for
            for spread in (1, 4):  # 8 streams on one adapter, then over 4 (conversation i names adapter i % 4)
                names = [f"adapter-{i}" for i in range(spread)]
                adapters["levels"].append(run_level(url, names, 8, args.requests or 16, args.max_tokens, deadline,
                                                    args.turns))
            report["adapters"] = adapters
        for c in levels:
            if time.monotonic() > deadline:
                break
            requests = args.requests or min(2 * c, 32)
            level = run_level(url, health["model"], c, requests, args.max_tokens, deadline, args.turns)
            if report["weight_bytes"]:
                # c streams decode together, reading the weights once per step for c tokens; the prefills and
                # the KV cache reads come on top, so the aggregate stays well below this
                level["decode_limit_tokens_per_s"] = c * bandwidth * 1e9 / report["weight_bytes"]
                level["fraction_of_decode_limit"] = level["tokens_per_s"] / level["decode_limit_tokens_per_s"]
            report["levels"].append(level)
        report["load_average_1m_end"] = _load_average()
    finally:
        if proc is not None:
            stop_server(proc)
        scratch.cleanup()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # its own name: `report` takes the newest serve_load-*.json for the serving row, a run on the base's torch backend
    prefix = "serve_adapters" if adapters is not None else "serve_load"
    out = out_dir / f"{prefix}-{report['backend']}-{report['model']}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(render_table(json.loads(out.read_text())))
    print(f"saved {out}")
    return 0


def _main_replicas(args, counts: list[int]) -> int:
    from benchmarks.cluster import MissingBinary

    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    load = _load_average()
    try:
        section = measure_replicas(args, counts, args.streams)
    except MissingBinary as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = {"benchmark": "serve_replicas", "created_at": started, "model": section.pop("model"),
              "backend": section.pop("backend"), "weight_bytes": section.pop("weight_bytes"),
              "max_tokens": args.max_tokens, "temperature": 0, "turns": args.turns, "prompts": PROMPTS,
              "hardware": _hardware(), "load_average_1m": load, "replicas": section,
              "load_average_1m_end": _load_average()}
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"serve_replicas-{report['backend']}-{report['model']}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    saved = json.loads(out.read_text())
    print(f"model={saved['model']} backend={saved['backend']} max_tokens={saved['max_tokens']} "
          f"cpu={saved['hardware'].get('cpu_model', '?')} "
          f"load_average_1m={saved['load_average_1m']}->{saved['load_average_1m_end']}")
    print(render_replicas(saved["replicas"]))
    print(f"saved {out}")
    return 0


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _hardware() -> dict:
    try:
        from finetune.hardware import detect_hardware

        info = detect_hardware().as_dict()
    except Exception as err:  # the benchmark still runs against a server without the training stack
        info = {"error": str(err)}
    info["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    return info


if __name__ == "__main__":
    sys.exit(main())
