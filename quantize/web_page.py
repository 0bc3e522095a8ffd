"""The extraction page of a web artifact, and the two ways to score the artifact on held-out extraction data.

The page (quantize/page/: index.html, extract.js, constraint.js) runs the model in the browser with transformers.js
(WASM on every core, WebGPU where the browser has it), decoding constrained to the extraction schema. transformers.js
and onnxruntime-web's WASM are installed from the npm registry at set-up time (scripts/vendor_web.sh) into
quantize/page/vendor/ and served from the same origin: the page never reaches a CDN. The export copies the page
into <artifact>/page/; serve the folder that holds the artifact (with `serve_folder`, or any static host) and open
/<artifact name>/page/.

    python -m quantize.web_page score ARTIFACT [--data FILE] [--max-examples N]      # onnxruntime in Python
    python -m quantize.web_page browser ARTIFACT [--data FILE] [--max-examples N] [--device webgpu]  # Chromium
Both print the extraction metrics (finetune.evaluate's) with the schema validity of the replies.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

logger = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).resolve().parent / "page"
VENDOR_DIR = PAGE_DIR / "vendor"
VENDOR_FILES = ("transformers.min.js", "ort-wasm-simd-threaded.asyncify.wasm", "ort-wasm-simd-threaded.asyncify.mjs",
                "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs")
PAGE_DATA_FILE = "extraction.json"
HELDOUT = "examples/data/extraction_heldout.jsonl"
MAX_NEW_TOKENS = 160
# Cross-origin isolation: without it browsers give no SharedArrayBuffer, and onnxruntime-web runs on one thread.
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


def vendor_ready() -> bool:
    return all((VENDOR_DIR / name).is_file() for name in VENDOR_FILES)


def page_data() -> dict:
    """What the page needs beside the model: the system prompt the specialist was trained with, and the program of
    the extraction schema for constrained decoding (quantize.web_schema)."""
    from finetune.extraction import SYSTEM_PROMPT, load_schema
    from quantize.web_schema import compile_schema

    return {"system_prompt": SYSTEM_PROMPT, "program": compile_schema(load_schema()),
            "max_new_tokens": MAX_NEW_TOKENS}


def write_page(dest: Path) -> Path:
    """Copy the page (and the vendored runtime) to `dest`; serve dest's parent (the artifact) and open page/."""
    shutil.copytree(PAGE_DIR, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("vendor", ".gitignore"))
    (dest / PAGE_DATA_FILE).write_text(json.dumps(page_data(), ensure_ascii=False) + "\n")
    if vendor_ready():
        shutil.copytree(VENDOR_DIR, dest / "vendor", dirs_exist_ok=True)
    else:
        logger.warning("transformers.js is not vendored (%s is missing): the page in %s cannot run until "
                       "scripts/vendor_web.sh installs it and the export runs again", VENDOR_DIR, dest)
    return dest


# ---- the Python path -------------------------------------------------------------------------------------------

def held_out(path: str | Path = HELDOUT, max_examples: int | None = 10) -> list:
    """finetune.evaluate's extraction examples (conversation before the reply, reference JSON)."""
    from finetune.evaluate.data import load_examples

    return load_examples(path, "extraction", max_examples)


def user_text(example) -> str:
    """The page takes the user's text; the held-out conversations are a system prompt and one user message."""
    users = [m["content"] for m in example.messages if m["role"] == "user"]
    if len(users) != 1:
        raise ValueError(f"{example.where}: the page extracts from one user message, this example has {len(users)}")
    return users[0]


class PythonExtractor:
    """The page's computation in Python: the same chat prompt, greedy decoding in onnxruntime and the same schema
    constraint (quantize.web_schema), so its tokens are what the browser must produce."""

    def __init__(self, artifact: str | Path, threads: int | None = None):
        from transformers import AutoTokenizer

        from quantize.web import VOCAB_TEXTS_FILE, load_web
        from quantize.web_schema import Automaton

        artifact = Path(artifact)
        self.decoder = load_web(artifact, threads)
        self.tokenizer = AutoTokenizer.from_pretrained(artifact)
        data = page_data()
        self.system_prompt = data["system_prompt"]
        texts = json.loads((artifact / VOCAB_TEXTS_FILE).read_text())
        self.automaton = Automaton(data["program"], texts, sorted(self.decoder.eos))

    def prompt_ids(self, text: str) -> list[int]:
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": text}]
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(prompt, add_special_tokens=False).input_ids

    def extract(self, text: str, constrained: bool = True, max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
        automaton = self.automaton
        states = [automaton.start()]
        failed = []  # as in the page: if no token is allowed, the rest is decoded without the constraint

        def allowed(generated: list[int]):
            if failed:
                return None
            for token in generated[len(states) - 1:]:
                states.append(automaton.advance(states[-1], token))
            state = states[-1]
            if state is None or not automaton.allowed_ids(state):
                failed.append(len(generated))
                return None
            return automaton.mask(state, self.vocab_size)

        started, clock = time.perf_counter(), []
        prompt = self.prompt_ids(text)
        tokens = self.decoder.greedy(prompt, max_new_tokens, allowed if constrained else None, stop_at_eos=True,
                                     clock=clock)
        ended = time.perf_counter()  # before detokenizing, as in the page
        return {"prompt_ids": prompt, "tokens": tokens, "constrained": constrained and not failed,
                "text": self.tokenizer.decode(tokens, skip_special_tokens=True), **timing(started, clock, ended)}

    @functools.cached_property
    def vocab_size(self) -> int:
        import numpy as np

        logits, _ = self.decoder.step([0], None, 0)
        return int(np.shape(logits)[-1])


def timing(started: float, clock: list[float], ended: float) -> dict:
    """The page's timing figures (extract.js) from seconds: the whole call, its first token, and the decoding rate
    after it (one forward per token between the first token's logits and the end)."""
    return {"ms": (ended - started) * 1000, "first_token_ms": (clock[0] - started) * 1000 if clock else None,
            "tokens_per_s": (len(clock) - 1) / (ended - clock[0]) if len(clock) > 1 else None}


def score(replies: list[str], examples: list, matching: str = "exact") -> dict:
    """finetune.evaluate's extraction metrics (schema validity included) of `replies`; matching "lenient" for the
    natural set, as finetune.evaluate scores it (finetune/extraction/matching.py)."""
    from finetune.evaluate.metrics import extraction_metrics
    from finetune.extraction import load_schema

    return extraction_metrics(replies, [e.reference for e in examples], load_schema(), matching=matching)


# ---- the browser path ------------------------------------------------------------------------------------------

class _IsolatedHandler(SimpleHTTPRequestHandler):
    served: list | None = None

    def end_headers(self):
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, *args):  # quiet: the browser fetches a dozen files
        pass

    def copyfile(self, source, outputfile):
        super().copyfile(source, outputfile)
        if self.served is not None:  # a file's body went out: what the browser downloaded (not a 304)
            path = Path(self.translate_path(self.path)).resolve()
            path = path / "index.html" if path.is_dir() else path  # a folder's URL sends its index.html
            self.served.append((path.relative_to(Path(self.directory).resolve()).as_posix(),
                                os.fstat(source.fileno()).st_size))


@contextmanager
def serve_folder(folder: str | Path, port: int = 0, served: list | None = None):
    """Serve `folder` on 127.0.0.1 with the cross-origin isolation headers; yields the base URL. `served` gets
    (path relative to `folder`, bytes) of each file sent in full."""
    handler = functools.partial(type("Handler", (_IsolatedHandler,), {"served": served}), directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# Chromium on Linux offers WebGPU only behind this flag; on a machine without a GPU its adapter is SwiftShader (a
# Vulkan implementation on the CPU), which runs the page's WebGPU path with the same WGSL kernels a GPU would.
WEBGPU_ARGS = ["--enable-unsafe-webgpu"]


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise FileNotFoundError("the browser run needs a system chromium (apt-get install -y chromium)")
    return found


@contextmanager
def browser_page(url: str, timeout_s: float = 300, navigate: bool = True, webgpu: bool = False):
    """A headless Chromium page on `url` with every request outside that origin aborted (offline but for it); with
    navigate=False the caller opens `url` itself (the benchmark times the navigation); webgpu=True offers the page
    WebGPU (SwiftShader where there is no GPU)."""
    from playwright import sync_api

    origin = url.split("/", 3)[:3]
    with sync_api.sync_playwright() as pw:
        args = CHROMIUM_ARGS + (WEBGPU_ARGS if webgpu else ["--disable-gpu"])
        browser = pw.chromium.launch(executable_path=chromium_path(), args=args)
        try:
            page = browser.new_page()
            page.set_default_timeout(timeout_s * 1000)
            blocked: list[str] = []

            def route(r):
                if r.request.url.split("/", 3)[:3] == origin or r.request.url.startswith(("blob:", "data:")):
                    r.continue_()
                else:
                    blocked.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            if navigate:
                page.goto(url)
            yield page, blocked
        finally:
            browser.close()


def browser_extract(page, texts: list[str], constrained: bool = True) -> list[dict]:
    """Run the page's extractor on each text in turn (after the model has loaded)."""
    page.wait_for_function("document.body.dataset.state === 'ready' || document.body.dataset.state === 'error'")
    if page.evaluate("document.body.dataset.state") == "error":
        raise RuntimeError(f"the page could not load the model: {page.inner_text('#status')}")
    return [page.evaluate("([t, c]) => window.extractor.extract(t, {constrained: c})", [text, constrained])
            for text in texts]


def run_browser(artifact: str | Path, texts: list[str], constrained: bool = True,
                max_new_tokens: int = MAX_NEW_TOKENS, device: str = "wasm") -> tuple[list[dict], dict]:
    """The page of `artifact`, served locally, on each text (on `device`: wasm or webgpu): its results and what the
    page said about itself."""
    artifact = Path(artifact)
    if not (artifact / "page" / "vendor" / VENDOR_FILES[0]).is_file():
        raise FileNotFoundError(f"{artifact}/page has no vendored transformers.js: run scripts/vendor_web.sh, then "
                                "export again")
    # The folder above the artifact is the root: transformers.js names a local model by its folder.
    with serve_folder(artifact.parent) as base, browser_page(
        f"{base}/{artifact.name}/page/?device={device}&max_new_tokens={max_new_tokens}", webgpu=device == "webgpu",
    ) as (page, blocked):
        results = browser_extract(page, texts, constrained)
        info = {"status": page.inner_text("#status"), "blocked_requests": list(blocked)}
    return results, info


# ---- command line ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.web_page", description=__doc__.split("\n\n")[0])
    parser.add_argument("where", choices=["score", "browser"], help="score: onnxruntime in Python; browser: Chromium")
    parser.add_argument("artifact", help="a web artifact folder (python -m quantize --backend web ...)")
    parser.add_argument("--data", default=HELDOUT, help="held-out extraction records (finetune.evaluate formats)")
    parser.add_argument("--max-examples", type=int, default=10)
    parser.add_argument("--unconstrained", action="store_true", help="decode without the schema constraint")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--matching", choices=["exact", "lenient"], default="exact",
                        help="how a predicted phrase names the gold one: lenient for the natural set")
    parser.add_argument("--device", choices=["wasm", "webgpu"], default="wasm",
                        help="browser: the page's device (webgpu runs on SwiftShader, the CPU, where there is no GPU)")
    parser.add_argument("--out", default=None,
                        help="also write the scores, the machine and every reply (with its record) to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    examples = held_out(args.data, args.max_examples)
    texts = [user_text(e) for e in examples]
    if args.where == "score":
        extractor = PythonExtractor(args.artifact)
        results = [extractor.extract(t, not args.unconstrained, args.max_new_tokens) for t in texts]
    else:
        results, info = run_browser(args.artifact, texts, not args.unconstrained, args.max_new_tokens, args.device)
        print(info["status"])
    metrics = score([r["text"] for r in results], examples, args.matching)
    keys = ("json_validity", "schema_validity", "attribute_f1", "aspect_f1", "aspect_sentiment_accuracy",
            "overall_sentiment_accuracy")
    summary = {"where": args.where, "examples": len(examples), "constrained": not args.unconstrained,
               **{k: metrics.get(k) for k in keys}}
    print(json.dumps(summary, indent=2))
    if args.out:
        from finetune.hardware import detect_hardware

        record = {**summary, "artifact": str(args.artifact), "data": args.data, "matching": args.matching,
                  "device": args.device if args.where == "browser" else "onnxruntime", "metrics": metrics,
                  "machine": {"hardware": detect_hardware().as_dict(), "load_average_1min": os.getloadavg()[0]},
                  "seconds": round(time.perf_counter() - started, 3),
                  "replies": [{"where": e.where, "reference": e.reference, "output": r["text"]}
                              for e, r in zip(examples, results)]}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
