"""The extraction page of one web artifact in Debian's Chromium (WASM, or WebGPU with --device webgpu), beside the
same artifact in onnxruntime in Python on the same held-out examples.

    python -m benchmarks web ARTIFACT [--data FILE] [--max-examples 10] [--max-new-tokens 160] [--device webgpu]

On a machine without a GPU, Chromium's WebGPU adapter is SwiftShader (Vulkan on the CPU): its row checks the WebGPU
path's tokens and scores, and its speed is SwiftShader's, not a GPU's.

Measured: (1) the download, counted by the local server from what the browser requested (each file sent in full:
the model, the tokenizer and config files, the runtime's JS and WASM, the page), per part and in total, against the
issue's bar of 500 MB; (2) the time to the first answer from navigation start (performance.now() when the first
extraction's JSON is back) on a cold load (a new browser context, empty caches) and on a warm one (a reload: the
HTTP cache and transformers.js's model cache are full); (3) decoding on the warm page over the examples, constrained
as the page decodes by default: tokens/s, per-utterance latency (median, p90) and where the time goes (the model's
forwards, our schema mask, transformers.js's own work per token), schema validity of the replies; (4) the same
examples through quantize.web_page's PythonExtractor (onnxruntime, the same prompt and constraint; one warm-up call
first, like the page's first answer): tokens/s, latency and whether its greedy tokens equal the browser's; (5) the
same examples through our serving pipeline (build_chatbot, what the chat server runs) on the artifact's source
model, in the precision the machine serves in, with the schema as response_format (--server-model).
Every request outside the local server is blocked: the page runs offline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.machine import cpu_label, machine_info, markdown_table, publish

DOWNLOAD_BAR_MB = 500.0
# A tiny model answers in seconds; the 135M base at 4 bits decoded 2.5 tokens/s in Chromium (160 tokens: ~65 s).
PAGE_TIMEOUT_S = 900
_EXTRACT_JS = """async ([text, constrained]) => {
  const result = await window.extractor.extract(text, {constrained});
  return {...result, at_ms: performance.now()};
}"""


def part_of(path: str) -> str:
    """The part of the download a served path (<artifact>/...) belongs to."""
    inside = path.split("/")[1:]
    if inside[:1] == ["onnx"]:
        return "model"
    if inside[:2] == ["page", "vendor"]:
        return "runtime"
    if inside[:1] == ["page"]:
        return "page"
    return "tokenizer_and_config"


def download_sizes(served: list[tuple[str, int]]) -> dict:
    """Bytes per file the browser downloaded (each counted once) and per part; `sent_bytes` counts repeats (a file
    fetched twice, e.g. config.json by the page and by transformers.js)."""
    files = dict(served)
    parts: dict[str, int] = {}
    for path, size in files.items():
        parts[part_of(path)] = parts.get(part_of(path), 0) + size
    return {"total_bytes": sum(files.values()), "parts": parts, "files": files,
            "sent_bytes": sum(size for _, size in served), "requests": len(served)}


def _percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


def decoding_summary(results: list[dict]) -> dict:
    """Tokens/s over all utterances (tokens after the first, over the time after the first token's logits) and the
    per-utterance latency."""
    ms = [r["ms"] for r in results]
    decode_tokens = sum(len(r["tokens"]) - 1 for r in results if r.get("first_token_ms") is not None)
    decode_s = sum((r["ms"] - r["first_token_ms"]) / 1000 for r in results if r.get("first_token_ms") is not None)
    return {"utterances": len(results), "tokens": sum(len(r["tokens"]) for r in results),
            "tokens_per_s": decode_tokens / decode_s if decode_s > 0 else None,
            "latency_median_ms": _percentile(ms, 50), "latency_p90_ms": _percentile(ms, 90),
            "first_token_median_ms": _percentile([r["first_token_ms"] for r in results
                                                  if r.get("first_token_ms") is not None], 50)}


def browser_split(results: list[dict]) -> dict:
    """The page's split of its time (extract.js split_ms), summed over the utterances, in ms per decoded token."""
    steps = sum(max(len(r["tokens"]) - 1, 0) for r in results) or 1
    totals: dict[str, float] = {}
    for r in results:
        for key, value in (r.get("split_ms") or {}).items():
            totals[key] = totals.get(key, 0.0) + (value or 0.0)
    per_token = {key: totals[key] / steps for key in ("forward", "constraint", "generate_other") if key in totals}
    prompt_tokens = sum(len(r["prompt_ids"]) for r in results) or 1
    return {"totals_ms": totals, "per_decoded_token_ms": per_token, "decoded_tokens": steps,
            "prefill_ms_per_prompt_token": totals.get("prefill", 0.0) / prompt_tokens,
            # the KV cache is reused when every forward after the prompt's is fed one token
            "kv_cache_reused": all(all(n == 1 for n in (r.get("forward_tokens") or [None, 1])[1:]) for r in results)}


def _first_answer(page, navigate, text: str, constrained: bool) -> dict:
    started = time.perf_counter()
    navigate()
    result = page.evaluate(_EXTRACT_JS, [text, constrained])
    return {"first_answer_ms": result["at_ms"], "wall_s": time.perf_counter() - started,
            "load_ms": page.evaluate("window.extractor.info()")["loadMs"], "tokens": len(result["tokens"])}


def run_browser(artifact: Path, texts: list[str], constrained: bool, max_new_tokens: int, query: str = "",
                device: str = "wasm") -> dict:
    """Cold load, warm reload, then every text on the warm page; with what the server sent for each load."""
    from quantize.web_page import browser_page, serve_folder

    served: list[tuple[str, int]] = []
    with serve_folder(artifact.parent, served=served) as base:
        url = f"{base}/{artifact.name}/page/?device={device}&max_new_tokens={max_new_tokens}" + (
            f"&{query}" if query else "")
        # browser_page opens a fresh profile (empty HTTP cache and Cache Storage) and refuses every other origin
        with browser_page(url, PAGE_TIMEOUT_S, navigate=False, webgpu=device == "webgpu") as (page, blocked):
            cold = _first_answer(page, lambda: page.goto(url), texts[0], constrained)
            cold["download"] = download_sizes(served)
            served.clear()
            warm = _first_answer(page, page.reload, texts[0], constrained)
            warm["download"] = download_sizes(served)
            info = page.evaluate("window.extractor.info()")
            results = [page.evaluate(_EXTRACT_JS, [t, constrained]) for t in texts]
            return {"cold": cold, "warm": warm, "page": info, "results": results, "blocked_requests": blocked,
                    "chromium": page.context.browser.version}


def run_python(artifact: Path, texts: list[str], constrained: bool, max_new_tokens: int, threads: int) -> dict:
    """PythonExtractor on `threads` threads (the page's WASM threads: the same share of the machine)."""
    from quantize.web_page import PythonExtractor

    extractor = PythonExtractor(artifact, threads=threads)
    extractor.extract(texts[0], constrained, max_new_tokens)  # warm-up, as the page's first answer is
    return {"results": [extractor.extract(t, constrained, max_new_tokens) for t in texts], "threads": threads}


def source_model(artifact: Path) -> str | None:
    """The model the artifact was exported from (quantization.json's source_model), if it is still on disk."""
    meta = artifact / "quantization.json"
    source = json.loads(meta.read_text()).get("source_model") if meta.is_file() else None
    return source if source and Path(source).exists() else None


def run_server(model: str, texts: list[str], constrained: bool, max_new_tokens: int) -> dict:
    """The same texts through our serving pipeline (build_chatbot, what the chat server and /v1/chat/completions
    run) on the artifact's source model, in the precision the machine serves in, the schema as response_format:
    per-utterance latency, time to the first streamed chunk, and the reply's tokens."""
    from finetune.extraction import SYSTEM_PROMPT, load_schema
    from finetune.models import load_tokenizer
    from neural_chat_app import GenerationConfig, PipelineConfig, build_chatbot

    bot = build_chatbot(PipelineConfig(model_name_or_path=model, system_prompt=SYSTEM_PROMPT))
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens)
    schema = load_schema() if constrained else None
    tokenizer = getattr(bot.backend, "tokenizer", None) or load_tokenizer(model)
    bot.predict(texts[0], config, schema)  # warm-up, as the page's first answer is
    results = []
    for text in texts:
        started, first, chunks = time.perf_counter(), None, []
        stream, _ = bot.predict_stream(text, config, schema)
        for chunk in stream:
            first = first if first is not None else (time.perf_counter() - started) * 1000
            chunks.append(chunk)
        reply = "".join(chunks)
        results.append({"text": reply, "tokens": tokenizer(reply, add_special_tokens=False).input_ids,
                        "ms": (time.perf_counter() - started) * 1000, "first_token_ms": first,
                        "constrained": constrained})  # response_format is enforced or refused, never dropped
    return {"results": results, "model": model, "dtype": getattr(bot.backend, "dtype", None)}


def _versions(artifact: Path) -> dict:
    import importlib.metadata

    vendored = artifact / "page" / "vendor" / "VERSION"  # the runtime the artifact's page was exported with
    versions = {"transformers.js (vendored)": vendored.read_text().strip() if vendored.is_file() else None}
    for name in ("onnxruntime", "onnx", "playwright"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def measure(artifact: Path, data: str, max_examples: int, max_new_tokens: int, constrained: bool = True,
            page_query: str = "", device: str = "wasm", server_model: str | None = None) -> dict:
    from quantize.web import onnx_file
    from quantize.web_page import held_out, score, user_text

    examples = held_out(data, max_examples)
    texts = [user_text(e) for e in examples]
    browser = run_browser(artifact, texts, constrained, max_new_tokens, page_query, device)
    python = run_python(artifact, texts, constrained, max_new_tokens, browser["page"]["threads"])
    server = run_server(server_model, texts, constrained, max_new_tokens) if server_model else None
    keys = ("json_validity", "schema_validity", "attribute_f1", "aspect_f1", "overall_sentiment_accuracy")
    sides = {}
    for name, side in (("browser", browser), ("python", python), ("server", server)):
        if side is None:
            continue
        metrics = score([r["text"] for r in side["results"]], examples)
        sides[name] = {**decoding_summary(side["results"]), **{k: metrics.get(k) for k in keys},
                       "constrained": sum(bool(r["constrained"]) for r in side["results"])}
    same = [b["tokens"] == p["tokens"] and b["prompt_ids"] == p["prompt_ids"]
            for b, p in zip(browser["results"], python["results"])]
    total_mb = browser["cold"]["download"]["total_bytes"] / 1e6
    meta_file = artifact / "quantization.json"
    return {
        "benchmark": "web", "machine": machine_info(),
        "versions": {**_versions(artifact), "chromium": browser["chromium"]},
        "artifact": str(artifact), "model_file": onnx_file(artifact).relative_to(artifact).as_posix(),
        "quantization": (json.loads(meta_file.read_text()).get("tag") if meta_file.is_file() else None),
        "data": str(data), "examples": len(examples), "max_new_tokens": max_new_tokens, "constrained": constrained,
        "page_query": page_query,
        "download": browser["cold"]["download"], "warm_download": browser["warm"]["download"],
        "first_answer": {"cold": {k: v for k, v in browser["cold"].items() if k != "download"},
                         "warm": {k: v for k, v in browser["warm"].items() if k != "download"}},
        "page": browser["page"], "browser": sides["browser"], "python": sides["python"],
        "server": ({**sides["server"], "model": server["model"], "dtype": server["dtype"]} if server else None),
        "python_threads": python["threads"], "browser_split": browser_split(browser["results"]),
        "tokens_equal": sum(same), "speed_ratio_python_over_browser": (
            sides["python"]["tokens_per_s"] / sides["browser"]["tokens_per_s"]
            if sides["python"]["tokens_per_s"] and sides["browser"]["tokens_per_s"] else None),
        "blocked_requests": browser["blocked_requests"],
        "checks": [{"check": "download (MB)", "value": round(total_mb, 1), "bar": f"< {DOWNLOAD_BAR_MB:.0f}",
                    "pass": total_mb < DOWNLOAD_BAR_MB}],
        "utterances": {"browser": browser["results"], "python": python["results"],
                       **({"server": server["results"]} if server else {})},
    }


def render(payload: dict) -> str:
    m, page = payload["machine"], payload["page"]
    lines = [f"{payload['artifact']} ({payload['model_file']}), {payload['examples']} examples of {payload['data']}, "
             f"up to {payload['max_new_tokens']} new tokens, constrained={payload['constrained']}",
             f"{cpu_label(m)}, {m['hardware'].get('usable_cores')} cores, load average (1 min) "
             f"{m['load_average_1min']:.2f}; Chromium {payload['versions']['chromium']}: {page['dtype']} on "
             f"{page['device']}, {page['threads']} thread(s), {page['wasmBuild']} WASM build; onnxruntime "
             f"{payload['versions']['onnxruntime']} in Python, threads: {payload['python_threads']}", ""]
    download = payload["download"]
    rows = [{"part": part, "MB": size / 1e6} for part, size in sorted(download["parts"].items())]
    rows.append({"part": "total", "MB": download["total_bytes"] / 1e6})
    lines += [markdown_table(rows, [("part", "download (cold load)"), ("MB", "MB")]), ""]
    first = payload["first_answer"]
    lines += [markdown_table([{"load": name, "s": first[name]["first_answer_ms"] / 1000,
                               "model_s": first[name]["load_ms"] / 1000,
                               "MB": payload["download" if name == "cold" else "warm_download"]["total_bytes"] / 1e6}
                              for name in ("cold", "warm")],
                             [("load", "load"), ("s", "first answer (s from navigation)"),
                              ("model_s", "model loaded (s)"), ("MB", "downloaded (MB)")]), ""]
    rows = [{"where": name, **payload[name]} for name in ("browser", "python")]
    if payload.get("server"):
        rows.append({**payload["server"], "where": f"server ({payload['server']['dtype']}, source model)"})
    lines += [markdown_table(rows, [("where", "where"), ("tokens_per_s", "tokens/s"),
                                    ("latency_median_ms", "latency median (ms)"), ("latency_p90_ms", "p90 (ms)"),
                                    ("first_token_median_ms", "first token median (ms)"), ("tokens", "tokens"),
                                    ("schema_validity", "schema valid %"), ("json_validity", "JSON valid %")]), ""]
    split = payload["browser_split"]
    per = split["per_decoded_token_ms"]
    lines.append(f"browser, ms per decoded token: model forward {per.get('forward', 0):.1f}, our schema mask "
                 f"{per.get('constraint', 0):.2f}, transformers.js's own {per.get('generate_other', 0):.2f}; prompt "
                 f"forward {split['prefill_ms_per_prompt_token']:.2f} ms per prompt token; KV cache reused: "
                 f"{split['kv_cache_reused']}")
    ratio = payload["speed_ratio_python_over_browser"]
    lines.append(f"greedy tokens equal to Python's: {payload['tokens_equal']} of {payload['examples']}; Python decodes "
                 f"{ratio:.1f}x the browser's tokens/s" if ratio else
                 f"greedy tokens equal to Python's: {payload['tokens_equal']} of {payload['examples']}")
    for c in payload["checks"]:
        lines.append(f"{'PASS' if c['pass'] else 'FAIL'}  {c['check']}: {c['value']} (bar {c['bar']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from quantize.web_page import HELDOUT, MAX_NEW_TOKENS

    p = argparse.ArgumentParser(prog="python -m benchmarks web", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", help="a web artifact folder (python -m quantize --backend web ...)")
    p.add_argument("--data", default=HELDOUT, help="held-out extraction records (finetune.evaluate formats)")
    p.add_argument("--max-examples", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    p.add_argument("--unconstrained", action="store_true", help="decode without the schema constraint")
    p.add_argument("--page-query", default="", help="more of the page's URL parameters, e.g. wasm=asyncify "
                   "(onnxruntime-web's other WASM build) or threads=1")
    p.add_argument("--device", choices=["wasm", "webgpu"], default="wasm",
                   help="the page's device; webgpu runs on SwiftShader (the CPU) where there is no GPU")
    p.add_argument("--server-model", default=None,
                   help="the model our serving pipeline runs beside the page (default: the artifact's source model, "
                   "when it is on disk; '' for none)")
    args = p.parse_args(argv)
    artifact = Path(args.artifact).resolve()
    server_model = source_model(artifact) if args.server_model is None else (args.server_model or None)
    payload = measure(artifact, args.data, args.max_examples, args.max_new_tokens, not args.unconstrained,
                      args.page_query, args.device, server_model)
    publish("web", payload, render(payload))
    return 0 if all(c["pass"] for c in payload["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
