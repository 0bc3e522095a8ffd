"""The web chat page in a real headless Chromium (Debian's, driven by Playwright): send, stream, reload, history;
Markdown replies (highlighted, sanitized), the settings of a conversation, the retrieval plugin's sources; and
feedback, regenerate, edit and flip on the page, whose log the improve loop turns into a DPO-tuned candidate that
the gate promotes or rejects.

Needs: apt-get install -y chromium; pip install playwright (never `playwright install`: the system browser is used).
Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/neural_chat_app/test_web_page.py
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Skipping is opt-in and visible: a missing browser fails the run unless the developer says so.
SKIP = bool(os.environ.get("NEURALCHAT_SKIP_BROWSER")) and CHROMIUM is None
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(SKIP, reason="NEURALCHAT_SKIP_BROWSER is set and no chromium is installed"),
]
if not SKIP:
    from playwright import sync_api
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def page():
    assert CHROMIUM, "the browser test needs a system chromium (apt-get install -y chromium); scripts/test.sh does it"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_send_stream_reload_history_and_feedback(make_server, slow_backend, page):
    # The slow fake backend streams "x " chunks, so the reply visibly grows while it streams.
    server = make_server(backend=slow_backend, limits={"max_tokens": 12})
    page.goto(server.url + "/")
    page.wait_for_selector("#model option", state="attached")
    page.fill("#input", "hello browser")
    page.click("#send")
    page.wait_for_selector("#stop:not([hidden])")  # streaming has started
    reply = page.locator(".message.assistant").last
    page.wait_for_function("document.querySelector('.message.assistant').dataset.state === 'done'")
    text = reply.locator(".text").inner_text()
    assert text.strip().startswith("x x")
    assert page.locator(".message.user .text").first.inner_text() == "hello browser"

    page.reload()
    page.wait_for_selector(".message.assistant")
    assert page.locator(".message.user .text").first.inner_text() == "hello browser"
    assert page.locator(".message.assistant .text").first.inner_text() == text
    assert page.locator("#conversations li").first.inner_text() == "hello browser"

    page.locator(".message.assistant .feedback button[data-feedback='1']").first.click()
    page.wait_for_selector(".feedback button.chosen")
    conversation = page.evaluate("location.hash").removeprefix("#c=")
    logged = httpx.get(server.url + f"/api/conversations/{conversation}").json()["messages"]
    assert logged[-1]["role"] == "assistant" and logged[-1]["feedback"] == 1


def test_stop_button_ends_the_stream(make_server, slow_backend, page):
    slow_backend.delay = 0.2
    server = make_server(backend=slow_backend, limits={"max_tokens": 500})
    page.goto(server.url + "/")
    page.wait_for_selector("#model option", state="attached")
    page.fill("#input", "tell me a long story")
    page.click("#send")
    page.wait_for_function("(document.querySelector('.message.assistant .text') || {}).textContent?.includes('x')")
    page.click("#stop")
    page.wait_for_function("document.querySelector('.message.assistant').dataset.state === 'stopped'")
    assert slow_backend.stopped.wait(30)
    assert slow_backend.produced < 500


class FixedTextBackend:
    """Streams the same reply, a few characters at a time, whatever the prompt: the page's rendering is under test."""

    kind = "fake"
    max_concurrency = 1

    def __init__(self, tokenizer, text: str, model_id: str = "fixed"):
        self.tokenizer = tokenizer
        self.text = text
        self.model_id = model_id

    def stream(self, prompt_ids, config, result, cancel):
        result.prompt_tokens = len(prompt_ids)
        try:
            for start in range(0, len(self.text), 5):  # cuts through tags and fences: partial renders are sanitized too
                if cancel.is_set():
                    return
                time.sleep(0.005)
                result.completion_tokens += 1
                result.mark_token()
                yield self.text[start : start + 5]
        finally:
            result.finished_at = time.perf_counter()

    def close(self):
        pass


def wait_for_reply(page, n: int = 1):
    """Wait until the n-th assistant message of the page has finished streaming."""
    page.wait_for_function(
        f"(document.querySelectorAll('.message.assistant')[{n - 1}] || {{dataset: {{}}}}).dataset.state === 'done'"
    )


PWN = "window.__pwned = (window.__pwned || 0) + 1; alert(1)"
HOSTILE_REPLY = f"""Here is the plan:

- first item
- second item

<script>{PWN}</script>
<img src=x onerror="{PWN}">
<details open ontoggle="{PWN}"><summary>more</summary>hidden</details>

```python
def greet(name):
    return "hello " + name
```

[click me](javascript:window.__pwned=1) or see [the docs](https://example.org/docs).
"""


def assert_reply_is_markdown_and_inert(page, dialogs):
    reply = page.locator(".message.assistant .text").first
    assert reply.locator("ul > li").all_inner_texts() == ["first item", "second item"]
    code = reply.locator("pre > code.hljs.language-python")
    assert code.inner_text().startswith("def greet(name):")
    assert code.locator(".hljs-keyword").count() >= 2  # def, return
    assert reply.locator("script, img, [onerror], [ontoggle]").count() == 0
    assert reply.locator("a", has_text="click me").get_attribute("href") is None
    docs = reply.locator("a", has_text="the docs")
    assert docs.get_attribute("href") == "https://example.org/docs"
    assert docs.get_attribute("target") == "_blank" and "noopener" in docs.get_attribute("rel")
    reply.locator("a", has_text="click me").click()
    assert page.evaluate("window.__pwned") is None and dialogs == []


def test_reply_is_rendered_as_highlighted_sanitized_markdown(make_server, tiny_backend, page):
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    server = make_server(backend=FixedTextBackend(tiny_backend.tokenizer, HOSTILE_REPLY))
    page.goto(server.url + "/")
    page.wait_for_selector("#model option", state="attached")
    user_text = "**not bold** <b onmouseover=alert(1)>tag</b>"
    page.fill("#input", user_text)
    page.click("#send")
    wait_for_reply(page)
    user = page.locator(".message.user .text").first
    assert user.inner_text() == user_text and user.locator("*").count() == 0  # user messages stay plain text
    assert_reply_is_markdown_and_inert(page, dialogs)

    page.reload()  # the logged reply is rendered by the same path
    page.wait_for_selector(".message.assistant pre code.hljs")
    assert_reply_is_markdown_and_inert(page, dialogs)


def test_a_thinking_model_s_reasoning_is_folded_apart_from_its_answer(make_server, page):
    from tests.families import family_tokenizer

    reply = "<think>\nThe user wants a sum.\n</think>\n\nIt is **4**."
    server = make_server(backend=FixedTextBackend(family_tokenizer("qwen3"), reply))
    page.goto(server.url + "/")
    page.wait_for_selector("#model option", state="attached")
    page.fill("#input", "What is 2 and 2?")
    page.click("#send")
    wait_for_reply(page)
    box = page.locator(".message.assistant").first
    assert box.locator(".reasoning div").text_content() == "The user wants a sum."  # folded: not rendered
    assert box.locator(".reasoning").get_attribute("open") is None  # folded once the answer came
    assert box.locator(".text").inner_text() == "It is 4." and box.locator(".text strong").inner_text() == "4"
    page.reload()  # the logged reply keeps its reasoning in the metadata, and the page shows it from there
    page.wait_for_selector(".message.assistant .reasoning", state="attached")
    box = page.locator(".message.assistant").first
    assert box.locator(".reasoning div").text_content() == "The user wants a sum."
    assert box.locator(".text").inner_text() == "It is 4."


def test_settings_are_sent_and_kept_per_conversation(make_server, tiny_backend, page):
    server = make_server(backend=FixedTextBackend(tiny_backend.tokenizer, "Arr."), limits={"max_tokens": 12})
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    page.goto(server.url + "/")
    page.wait_for_selector("#model option", state="attached")
    page.click("#settings summary")
    page.fill("#system-prompt", "Answer like a pirate.")
    page.fill("#temperature", "0.3")
    page.fill("#top-p", "0.8")
    page.fill("#max-tokens", "5")
    page.fill("#input", "first")
    page.click("#send")
    wait_for_reply(page)
    pirate = {"role": "system", "content": "Answer like a pirate."}
    assert bodies[-1]["messages"] == [pirate, {"role": "user", "content": "first"}]
    assert (bodies[-1]["temperature"], bodies[-1]["top_p"], bodies[-1]["max_tokens"]) == (0.3, 0.8, 5)
    first = page.evaluate("location.hash").removeprefix("#c=")
    logged = httpx.get(server.url + f"/api/conversations/{first}").json()["messages"]
    assert (logged[0]["role"], logged[0]["content"]) == ("system", "Answer like a pirate.")  # not the server's own

    page.reload()
    page.wait_for_selector(".message.assistant")
    values = ["#system-prompt", "#temperature", "#top-p", "#max-tokens"]
    assert [page.input_value(v) for v in values] == ["Answer like a pirate.", "0.3", "0.8", "5"]
    assert page.locator(".message.system").count() == 0  # the system prompt lives in the panel

    # A new conversation starts from the last used settings; what it changes stays its own.
    page.click("#new-chat")
    assert [page.input_value(v) for v in values] == ["Answer like a pirate.", "0.3", "0.8", "5"]
    page.click("#settings summary")
    page.fill("#system-prompt", "Answer like a poet.")
    page.fill("#temperature", "")
    page.fill("#input", "second")
    page.click("#send")
    wait_for_reply(page)
    poet = {"role": "system", "content": "Answer like a poet."}
    assert bodies[-1]["messages"] == [poet, {"role": "user", "content": "second"}]
    assert "temperature" not in bodies[-1] and bodies[-1]["top_p"] == 0.8

    page.wait_for_selector("#conversations li:text-is('first')")
    page.click("#conversations li:text-is('first')")
    page.wait_for_selector(".message.assistant")
    assert [page.input_value(v) for v in values] == ["Answer like a pirate.", "0.3", "0.8", "5"]
    page.fill("#input", "third")
    page.click("#send")
    wait_for_reply(page, 2)
    assert [m["role"] for m in bodies[-1]["messages"]] == ["system", "user", "assistant", "user"]  # one system
    assert bodies[-1]["messages"][0] == pirate

    page.reload()  # reopens the first conversation; the second still has its own settings
    page.wait_for_selector(".message.assistant")
    page.click("#conversations li:text-is('second')")
    page.wait_for_selector(".message.user .text:text-is('second')")
    assert [page.input_value(v) for v in values] == ["Answer like a poet.", "", "0.8", "5"]


def test_retrieval_sources_are_listed_under_the_reply(make_server, tiny_backend, tmp_path, page):
    from tests.neural_chat_app.test_plugins import FakeEmbedder

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "zorblax.txt").write_text('The Zorblax 9000 has 77 cores. <img src=x onerror="window.__pwned = 1">\n')
    (docs / "cafeteria.txt").write_text("The cafeteria serves lentil soup on Mondays.\n")
    retrieval = {
        "input_path": str(docs),
        "persist_directory": str(tmp_path / "index"),
        "embedding_model": FakeEmbedder(),
    }
    backend = FixedTextBackend(tiny_backend.tokenizer, "It has **77 cores**.")
    server = make_server(backend=backend, plugins={"retrieval": {"enable": True, "args": retrieval}})
    page.goto(server.url + "/")
    page.wait_for_selector("#model option", state="attached")
    page.fill("#input", "How many cores does the Zorblax 9000 have?")
    page.click("#send")
    wait_for_reply(page)
    sources = page.locator(".message.assistant .sources li")
    assert sources.first.locator("summary").inner_text().startswith("zorblax.txt")
    assert "zorblax.txt" in sources.first.locator("summary").get_attribute("title")
    sources.first.locator("summary").click()
    passage = sources.first.locator("details p")
    assert '77 cores. <img src=x onerror="window.__pwned = 1">' in passage.inner_text()  # shown as text
    assert page.locator(".sources img").count() == 0 and page.evaluate("window.__pwned") is None
    assert page.locator(".message.assistant .text strong").inner_text() == "77 cores"


class NumberedBackend(FixedTextBackend):
    """A different reply each time ("Reply number 3."): a regenerated reply is not the one it replaces."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, "")
        self.count = 0

    def stream(self, prompt_ids, config, result, cancel):
        self.count += 1
        self.text = f"Reply number {self.count}."
        yield from super().stream(prompt_ids, config, result, cancel)


def _ask(page, question: str) -> None:
    page.click("#new-chat")
    page.fill("#input", question)
    page.click("#send")
    wait_for_reply(page)


def _regenerate(page, replies: int) -> None:
    page.locator(".message.assistant").last.locator(".regenerate").click()
    page.wait_for_selector(f".message.assistant .position:text-is('{replies}/{replies}')")


def _edit(page, text: str, replies: int) -> None:
    reply = page.locator(".message.assistant").last
    reply.locator(".edit").click()
    reply.locator(".edit-box textarea").fill(text)
    reply.locator(".edit-box .save").click()
    page.wait_for_selector(f".message.assistant .position:text-is('{replies}/{replies}')")
    assert page.locator(".message.assistant .text").last.inner_text() == text


def _rate(page, value: int) -> None:
    page.locator(f".message.assistant .feedback button[data-feedback='{value}']").last.click()
    page.wait_for_selector(f".message.assistant .feedback button[data-feedback='{value}'].chosen")


def test_feedback_regenerate_and_edit_on_the_page_feed_a_gated_dpo_candidate(make_server, tiny_backend, page,
                                                                             tiny_model_dir, tmp_path):
    """Issue 23's "done when": thumbs, regenerate and edit on the page; `improve` on that log DPO-tunes a candidate,
    scores it on the held-out pairs and promotes or rejects it by the gate, with the numbers recorded."""
    server = make_server(backend=NumberedBackend(tiny_backend.tokenizer))
    page.goto(server.url + "/")
    page.wait_for_selector("#model option", state="attached")
    for n in range(3):  # regenerate, then write the reply wanted, and like it: two pairs each
        _ask(page, f"Where is shop {n}?")
        _regenerate(page, 2)
        _edit(page, f"Shop {n} is on Main Street {n}.", 3)
        _rate(page, 1)
    _ask(page, "Which bike for hills?")  # regenerate, flip back to the first reply, like it: one pair
    first = page.locator(".message.assistant .text").last.inner_text()
    _regenerate(page, 2)
    page.locator(".message.assistant .previous").last.click()
    page.wait_for_selector(".message.assistant .position:text-is('1/2')")
    assert page.locator(".message.assistant .text").last.inner_text() == first
    _rate(page, 1)
    _ask(page, "Tell me a joke")  # a disliked reply: a KTO example, never an SFT target
    _rate(page, -1)

    db = server.state.chatlog.path
    rows = sqlite3.connect(db).execute("SELECT COUNT(*), SUM(superseded_by IS NOT NULL), SUM(edited) FROM messages "
                                       "WHERE role = 'assistant'").fetchone()
    assert rows == (3 * 3 + 2 + 1, 3 * 2 + 1, 3)

    from neural_chat_app.__main__ import main

    config = tmp_path / "improve.yaml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "run_dir": str(tmp_path / "run"), "chat_log": str(db), "base_model": str(tiny_model_dir),
        "models_dir": str(tmp_path / "models"), "min_conversations": 100,  # too few liked chats: DPO alone
        "preference": "dpo", "min_pairs": 5, "preference_heldout": 0.4, "quantize": None,
        "preference_finetune": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 0.01,
                                "lora_all_linear": True, "save_steps": 2, "max_seq_length": 128,
                                "disable_tqdm": True},
    }))
    assert main(["improve", "--config", str(config)]) == 0
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    steps = state["steps"]
    assert steps["collect"]["preference"]["pairs_written"] == 7
    assert "min_conversations=100" in steps["finetune"]["skipped"]
    assert steps["preference"]["base"] == str(tiny_model_dir)
    candidate = steps["preference"]["output_dir"]
    pref = steps["evaluate"]["preference"]
    held_out = steps["prepare"]["preference"]["counts"]["test"]  # the data pipeline's split, grouped by prompt
    assert pref["task"] == "dpo" and pref["candidate"]["examples"] == pref["current"]["examples"] == held_out > 0
    assert pref["current"]["reward_accuracy"] == 0 and pref["current"]["reward_margin"] == 0  # the reference
    rules = steps["evaluate"]["rules"]
    assert [r["rule"].split()[0] for r in rules] == ["reward_accuracy", "reward_margin"]
    assert rules[0]["value"] == pref["candidate"]["reward_accuracy"]
    assert steps["promote"]["promoted"] == steps["evaluate"]["better"] == all(r["holds"] for r in rules)
    promoted = (tmp_path / "models" / "promoted.json")
    assert promoted.is_file() == steps["promote"]["promoted"]
    if promoted.is_file():
        assert json.loads(promoted.read_text())["model"] == candidate
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Gate" in report and "| candidate |" in report
