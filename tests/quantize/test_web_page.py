"""The extraction page in a real headless Chromium (Debian's, driven by Playwright), offline but for a local server:
the 4-bit web artifact of the tiny llama extracts from 10 held-out examples with the browser's greedy tokens equal to
onnxruntime's in Python (same prompt, same schema constraint), the same extraction metrics, and schema-valid JSON;
on WebGPU (SwiftShader where there is no GPU) the same page gives the same tokens.

Needs: apt-get install -y chromium; scripts/vendor_web.sh (scripts/setup.sh runs it). Never `playwright install`.
Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q -m "" tests/quantize/test_web_page.py
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP = bool(os.environ.get("NEURALCHAT_SKIP_BROWSER")) and CHROMIUM is None
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(SKIP, reason="NEURALCHAT_SKIP_BROWSER is set and no chromium is installed"),
]
pytest.importorskip("onnxruntime")
MAX_NEW_TOKENS = 48  # the tiny model's constrained replies; keeps the browser run to seconds


@pytest.fixture(scope="module")
def examples():
    from quantize.web_page import held_out

    return held_out(max_examples=10)


def test_browser_tokens_and_scores_equal_python(web_artifacts, examples):
    from quantize.web_page import PythonExtractor, run_browser, score, user_text, vendor_ready

    assert CHROMIUM, "the browser test needs a system chromium (apt-get install -y chromium); scripts/test.sh does it"
    assert vendor_ready(), "transformers.js is not vendored: run scripts/vendor_web.sh (scripts/setup.sh runs it)"
    artifact = web_artifacts[4]
    texts = [user_text(e) for e in examples]
    python = PythonExtractor(artifact, threads=1)
    expected = [python.extract(t, max_new_tokens=MAX_NEW_TOKENS) for t in texts]
    browser, info = run_browser(artifact, texts, max_new_tokens=MAX_NEW_TOKENS)

    assert info["blocked_requests"] == []  # everything came from the local server
    assert "q4 on wasm" in info["status"]
    for got, want in zip(browser, expected):
        assert got["prompt_ids"] == want["prompt_ids"]  # the chat template renders the same in both
        assert got["tokens"] == want["tokens"]
        assert got["constrained"] and want["constrained"]
    ours, theirs = score([r["text"] for r in browser], examples), score([r["text"] for r in expected], examples)
    for key in ("json_validity", "schema_validity", "attribute_f1", "aspect_f1", "aspect_sentiment_accuracy",
                "overall_sentiment_accuracy"):
        assert abs((ours[key] or 0) - (theirs[key] or 0)) <= 1, key
    finished = [r for r in browser if len(r["tokens"]) < MAX_NEW_TOKENS]  # the rest hit the token limit mid-JSON
    assert finished and all(r["json"] is not None for r in finished)


def test_the_page_renders_a_table_and_says_when_unconstrained(web_artifacts, examples):
    from quantize.web_page import browser_page, serve_folder, user_text

    artifact = web_artifacts[4]
    with serve_folder(artifact.parent) as base, browser_page(
            f"{base}/{artifact.name}/page/?max_new_tokens={MAX_NEW_TOKENS}") as (page, blocked):
        page.wait_for_function("document.body.dataset.state === 'ready'")
        page.fill("#input", user_text(examples[0]))
        page.click("#run")
        page.wait_for_function("document.body.dataset.state === 'ready' && document.querySelector('#raw').textContent")
        assert page.inner_text("#mode") == "constrained to the extraction schema"
        raw = page.inner_text("#raw")
        if page.inner_text("#validity") == "valid JSON":
            assert page.locator("#table tbody tr").count() >= 1  # at least the overall sentiment
            assert page.locator("#table tbody tr").last.locator("td").first.inner_text() == "overall"
        page.uncheck("#constrained")
        page.click("#run")
        page.wait_for_function(f"document.querySelector('#raw').textContent !== {raw!r}"
                               " && document.body.dataset.state === 'ready'")
        assert page.inner_text("#mode").startswith("UNCONSTRAINED")
        assert blocked == []


class _NoChat:
    """The chat backend the server needs to start; the extraction page never calls it."""

    kind = "fake"
    max_concurrency = 1
    model_id = "none"
    tokenizer = None

    def close(self):
        pass


def test_the_server_serves_the_page_at_extract(web_artifacts, examples):
    import httpx

    from neural_chat_app.server import create_app, load_settings
    from quantize.web_page import browser_extract, browser_page, user_text
    from tests.neural_chat_app.conftest import RunningServer

    artifact = web_artifacts[4]
    settings = load_settings(None, model_dirs=[str(artifact.parent)], chat_log={"enabled": False})
    with RunningServer(create_app(settings, backend=_NoChat())) as server:
        index = httpx.get(server.url + "/extract", follow_redirects=True)
        assert index.status_code == 200 and str(index.url).endswith(f"/extract/{artifact.name}/page/")
        assert index.headers["cross-origin-embedder-policy"] == "require-corp"  # threads need isolation
        assert httpx.get(f"{server.url}/extract/{artifact.name}/onnx/model_q4.onnx").status_code == 200
        assert httpx.get(f"{server.url}/extract/{artifact.name}/..%2f..%2fetc/passwd").status_code == 404
        assert httpx.get(f"{server.url}/extract/elsewhere/config.json").status_code == 404
        with browser_page(f"{server.url}/extract/{artifact.name}/page/?device=wasm&max_new_tokens=8") as (
                page, blocked):
            [result] = browser_extract(page, [user_text(examples[0])])
            assert result["constrained"] and len(result["tokens"]) >= 1 and blocked == []
            assert page.evaluate("self.crossOriginIsolated")


def test_webgpu_tokens_equal_python(web_artifacts, examples):
    """The page's WebGPU path (onnxruntime-web's asyncify build, its WGSL kernels, 4-bit MatMulNBits included) gives
    onnxruntime-in-Python's greedy tokens. Without a GPU, Chromium's WebGPU adapter is SwiftShader on the CPU: the
    same kernels a GPU runs, so this checks the path, not its speed."""
    from quantize.web_page import PythonExtractor, run_browser, user_text

    artifact = web_artifacts[4]
    texts = [user_text(e) for e in examples[:3]]  # 3 of the 10: SwiftShader takes ~13 s an utterance here
    python = PythonExtractor(artifact, threads=1)
    expected = [python.extract(t, max_new_tokens=MAX_NEW_TOKENS) for t in texts]
    browser, info = run_browser(artifact, texts, max_new_tokens=MAX_NEW_TOKENS, device="webgpu")

    assert "q4 on webgpu" in info["status"], info["status"]  # the page took WebGPU, not a WASM fallback
    assert info["blocked_requests"] == []
    for got, want in zip(browser, expected):
        assert got["prompt_ids"] == want["prompt_ids"]
        assert got["constrained"] and got["tokens"] == want["tokens"]


@pytest.fixture(scope="module")
def mixed_artifact(tiny_model_dir, tmp_path_factory):
    """configs/quantize_web_extraction.yaml's recipe on the tiny llama: 4-bit blocks, v_proj and down_proj at 8."""
    from quantize import quantize_model

    return quantize_model(model=str(tiny_model_dir), output_dir=str(tmp_path_factory.mktemp("web-mixed")),
                          backend="web", bits=4, group_size=32, eight_bit_modules=["v_proj", "down_proj"],
                          num_eval_prompts=2, eval_new_tokens=6)


@pytest.mark.parametrize("device", ["wasm", "webgpu"])
def test_eight_bit_modules_give_python_tokens_in_the_browser(mixed_artifact, examples, device):
    """8-bit MatMulNBits beside 4-bit ones: onnxruntime-web runs both on WASM and WebGPU with Python's tokens."""
    from quantize.web_page import PythonExtractor, run_browser, user_text

    texts = [user_text(e) for e in examples[:2]]
    python = PythonExtractor(mixed_artifact, threads=1)
    expected = [python.extract(t, max_new_tokens=24) for t in texts]
    browser, info = run_browser(mixed_artifact, texts, max_new_tokens=24, device=device)

    assert f"q4 on {device}" in info["status"], info["status"]
    assert info["blocked_requests"] == []
    for got, want in zip(browser, expected):
        assert got["prompt_ids"] == want["prompt_ids"]
        assert got["constrained"] and got["tokens"] == want["tokens"]
