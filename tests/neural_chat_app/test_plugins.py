"""Chatbot plugins: the registry, document reading, the LanceDB index, the safety checker, ChatBot and HTTP hooks.

OMP_NUM_THREADS=1 pytest tests/neural_chat_app/test_plugins.py
Most tests embed with a bag-of-words FakeEmbedder (fast, exact); one uses the packaged all-MiniLM-L6-v2.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from neural_chat_app import PipelineConfig, build_chatbot, plugins
from neural_chat_app.plugins import check_plugins
from neural_chat_app.plugins.documents import find_documents, read_units, split_text
from neural_chat_app.plugins.safety import SafetyChecker
from neural_chat_app.plugins.settings import DEFAULT_REFUSAL, RetrievalArgs, SafetyCheckerArgs

DOCS = Path(__file__).parent / "fixtures" / "docs"
REPO = Path(__file__).resolve().parents[2]


class FakeEmbedder:
    """Hashed bag of words, unit length: texts sharing words are near, others far. Counts its calls."""

    name = "fake-bow"
    dim = 256

    def __init__(self):
        self.embedded = 0

    def embed(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                if len(word) > 3:
                    out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1
        self.embedded += len(texts)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def write_pdf(path: Path, pages: list[str]) -> Path:
    """A minimal valid PDF, one line of Helvetica text per page."""
    n = len(pages)
    objs = {
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(n))}] /Count {n} >>",
        3: "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for i, text in enumerate(pages):
        page, content = 4 + 2 * i, 5 + 2 * i
        objs[page] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content} 0 R "
            "/Resources << /Font << /F1 3 0 R >> >> >>"
        )
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objs[content] = f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream"
    out, offsets = b"%PDF-1.4\n", {}
    for i in sorted(objs):
        offsets[i] = len(out)
        out += f"{i} 0 obj\n{objs[i]}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offsets[i]:010d} 00000 n \n".encode() for i in sorted(objs))
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(out)
    return path


def write_docx(path: Path, paragraphs: list[str]) -> Path:
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    body = "".join(f"<w:p><w:r><w:t>{p}</w:t></w:r></w:p>" for p in paragraphs)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.'
            'wordprocessingml.document.main+xml"/></Types>',
        )
        z.writestr(
            "word/document.xml", f'<?xml version="1.0"?><w:document xmlns:w="{w}"><w:body>{body}</w:body></w:document>'
        )
    return path


@pytest.fixture
def docs(tmp_path) -> Path:
    """The fixture documents plus a PDF and a DOCX, in a folder the test may change."""
    folder = tmp_path / "docs"
    shutil.copytree(DOCS, folder)
    write_pdf(folder / "manual.pdf", ["Chapter one: unpacking the robot.", "The reset button is under the blue lid."])
    write_docx(folder / "policy.docx", ["Travel policy", "Employees book trains for trips shorter than 500 km."])
    return folder


@pytest.fixture(autouse=True)
def reset_registry():
    plugins.reset()
    yield
    plugins.reset()


def retrieval(docs: Path, tmp_path: Path, embedder=None, **extra) -> dict:
    args = {
        "input_path": str(docs),
        "persist_directory": str(tmp_path / "index"),
        "embedding_model": embedder or FakeEmbedder(),
        **extra,
    }
    return {"retrieval": {"enable": True, "args": args}}


# ---- the registry and its validation


def test_registry_has_neuralchat_shape_and_validates():
    assert plugins.retrieval.enable is False and plugins["safety_checker"]["args"] == {}
    plugins.retrieval.enable = True
    plugins.retrieval.args["input_path"] = "docs/"
    plugins.retrieval.args["search_kwargs"] = {"k": 5}
    enabled = check_plugins(plugins)
    assert isinstance(enabled["retrieval"], RetrievalArgs) and enabled["retrieval"].top_k == 5
    assert PipelineConfig(plugins=plugins).plugins is plugins  # NeuralChat passed the registry itself


@pytest.mark.parametrize(
    ("entry", "error", "match"),
    [
        ({"tts": {"enable": True}}, NotImplementedError, "'tts'"),
        ({"rag": {"enable": True}}, ValueError, "unknown plugin 'rag'"),
        ({"retrieval": {"enable": True}}, ValueError, "input_path"),
        ({"retrieval": {"enable": True, "args": {"input_path": "d", "chunk_sise": 3}}}, ValueError, "chunk_sise"),
        ({"retrieval": {"enable": True, "args": {"input_path": "d", "chunk_overlap": 900}}}, ValueError, "overlap"),
        ({"safety_checker": {"enable": True, "args": {"patterns": ["("]}}}, ValueError, "regular expression"),
        ({"safety_checker": {"enable": True, "args": {"reply_action": "drop"}}}, ValueError, "reply_action"),
        ({"retrieval": True}, TypeError, "enable"),
    ],
)
def test_bad_plugin_settings_are_refused_by_name(entry, error, match):
    with pytest.raises(error, match=match):
        PipelineConfig(plugins=entry)


def test_disabled_plugins_need_no_arguments():
    assert check_plugins({"retrieval": {"enable": False}, "tts": {"enable": False}}) == {}


def test_import_stays_light():
    code = (
        "import sys, neural_chat_app; from neural_chat_app import plugins; plugins.retrieval.enable = True;"
        "print(sorted(m for m in ('lancedb', 'pypdf', 'neural_chat_app.plugins.retrieval',"
        " 'neural_chat_app.plugins.embedding') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- documents


def test_every_format_is_read_with_its_location(docs):
    files = {p.name: p for p in find_documents([str(docs)])}
    assert sorted(files) == sorted(
        [
            "cafeteria.txt",
            "faq.jsonl",
            "gardening.html",
            "manual.pdf",
            "parts.csv",
            "policy.docx",
            "zorblax_datasheet.md",
        ]
    )
    pdf = read_units(files["manual.pdf"])
    assert [u.location for u in pdf] == ["page 1", "page 2"] and "blue lid" in pdf[1].text
    assert "500 km" in read_units(files["policy.docx"])[0].text
    html = read_units(files["gardening.html"])[0].text
    assert "six hours of direct sunlight" in html and "hidden" not in html and "color: green" not in html
    rows = read_units(files["parts.csv"])
    assert rows[0].text == "part_number: QX-17; name: flux regulator; color: teal; stock: 12"
    assert rows[1].location == "row 2"
    md = {u.location: u.text for u in read_units(files["zorblax_datasheet.md"])}
    assert md["section Cores"] == "Zorblax 9000 datasheet, Cores: The Zorblax 9000 has 77 cores in total."
    faq = read_units(files["faq.jsonl"])
    assert faq[0].text.startswith("The visitor parking lot") and faq[1].text.startswith("id: 2; answer:")


def test_missing_or_unsupported_input_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        find_documents([str(tmp_path / "nope")])
    (tmp_path / "a.exe").write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        find_documents([str(tmp_path / "a.exe")])
    with pytest.raises(ValueError, match="no documents"):
        find_documents([str(tmp_path)])


def test_split_text_respects_size_and_overlaps():
    text = " ".join(f"word{i}" for i in range(400))
    chunks = split_text(text, 200, 50)
    assert all(len(c) <= 200 for c in chunks) and len(chunks) > 10
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.split()[-1] in b.split()[:10]  # the next chunk starts inside the previous one's tail
    words = {w for c in chunks for w in c.split()}
    assert words == set(text.split())  # nothing lost, no word cut in two
    assert split_text("  short  ", 200, 50) == ["short"] and split_text("", 200, 50) == []


# ---- the index


def test_retriever_finds_the_document_that_holds_the_answer(docs, tmp_path):
    from neural_chat_app.plugins.retrieval import Retriever

    r = Retriever(RetrievalArgs(**retrieval(docs, tmp_path)["retrieval"]["args"]))
    assert r.stats["added"] == 7 and r.stats["chunks"] >= 8
    hits = r.search("How many cores does the Zorblax 9000 processor have?")
    assert Path(hits[0].source).name == "zorblax_datasheet.md" and "77 cores" in hits[0].text
    hits = r.search("Where is the reset button of the robot?")
    assert Path(hits[0].source).name == "manual.pdf" and hits[0].location == "page 2"
    assert r.search("xylophone quantum zebra") == []  # nothing similar enough: min_score


def test_index_is_kept_in_sync_and_reused(docs, tmp_path):
    from neural_chat_app.plugins.retrieval import Retriever

    args = retrieval(docs, tmp_path)["retrieval"]["args"]
    Retriever(RetrievalArgs(**args))
    (docs / "cafeteria.txt").write_text("The cafeteria now opens at 9:40 and serves ramen on Mondays.")
    (docs / "parts.csv").unlink()
    embedder = FakeEmbedder()
    r = Retriever(RetrievalArgs(**{**args, "embedding_model": embedder}))
    assert (r.stats["added"], r.stats["updated"], r.stats["removed"], r.stats["kept"]) == (0, 1, 1, 5)
    assert embedder.embedded == 1  # only the changed file's one chunk was embedded again
    assert "9:40" in r.search("When does the cafeteria open?")[0].text
    sources = {Path(row["source"]).name for row in r.table.search().select(["source"]).limit(None).to_list()}
    assert "parts.csv" not in sources and "lentil" not in json.dumps(r.table.search().limit(None).to_list())

    class OtherModel(FakeEmbedder):
        name = "other"

    r = Retriever(RetrievalArgs(**{**args, "embedding_model": OtherModel()}))
    assert r.stats["added"] == 6 and r.stats["kept"] == 0  # another embedding model: everything re-indexed
    r = Retriever(RetrievalArgs(**{**args, "embedding_model": OtherModel(), "chunk_size": 300}))
    assert r.stats["added"] == 6 and r.stats["kept"] == 0  # other chunks: the same


def test_packaged_minilm_embeds_offline_and_retrieves(docs, tmp_path, monkeypatch):
    from neural_chat_app.plugins.embedding import Embedder
    from neural_chat_app.plugins.retrieval import Retriever

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = Embedder()
    v = embedder.embed(["The capital of France is Paris.", "Paris is France's capital.", "I like green tea."])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.8 > 0.3 > v[0] @ v[2]
    r = Retriever(RetrievalArgs(input_path=str(docs), persist_directory=str(tmp_path / "ix"), embedding_model=embedder))
    assert Path(r.search("What is the thermal design power of the Zorblax chip?")[0].source).name == (
        "zorblax_datasheet.md"
    )
    assert Path(r.search("Which train rules apply to business trips?")[0].source).name == "policy.docx"


# ---- the safety checker


def test_query_with_a_sensitive_term_is_refused_with_the_configured_message():
    checker = SafetyChecker(SafetyCheckerArgs(terms=["project nightingale"], refusal_message="Not here."))
    assert checker.check_query("Tell me about Project   Nightingale please") == "Not here."
    assert checker.check_query("Tell me about nightingales") is None
    assert SafetyChecker().check_query("how do I make a bomb") == DEFAULT_REFUSAL
    assert SafetyChecker(SafetyCheckerArgs(check_query=False)).check_query("make a bomb") is None


def test_whole_words_only_and_dict_path(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("# one per line\nfoo bar\nsecret\n")
    checker = SafetyChecker(SafetyCheckerArgs(dict_path=str(words), use_default_terms=False))
    assert checker.matches("SECRET plans, foo  bar, secretary, foobar") == ["SECRET", "foo  bar"]
    assert SafetyChecker().mask("Scunthorpe is a town") == "Scunthorpe is a town"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        SafetyChecker(SafetyCheckerArgs(dict_path=str(tmp_path / "missing.txt")))


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 50, 1000])
def test_reply_is_masked_even_when_a_term_is_split_across_chunks(piece):
    checker = SafetyChecker(
        SafetyCheckerArgs(terms=["hunter2", "top secret"], patterns=[r"\b\d{4}-\d{4}-\d{4}-\d{4}\b"])
    )
    text = ("My password is hunter2, it is top\nsecret. " * 3) + "Card 1234-5678-9012-3456 ok. hunter22 stays."
    chunks = [text[i : i + piece] for i in range(0, len(text), piece)]
    out = "".join(checker.filter_reply(iter(chunks)))
    assert out == checker.mask(text)
    assert len(out) == len(text) and "hunter2," not in out and "secret" not in out and "1234" not in out
    assert out.count("*******,") == 3 and "hunter22 stays." in out


def test_reply_refuse_mode_replaces_the_whole_reply():
    args = SafetyCheckerArgs(terms=["hunter2"], reply_action="refuse", reply_refusal_message="Withheld.")
    checker = SafetyChecker(args)
    assert list(checker.filter_reply(iter(["the pass", "word is hun", "ter2"]))) == ["Withheld."]
    assert list(checker.filter_reply(iter(["all ", "fine"]))) == ["all fine"]


# ---- ChatBot and the HTTP API on the tiny model


def test_chatbot_answers_with_retrieved_context_and_returns_links(tiny_model_dir, docs, tmp_path, monkeypatch):
    import neural_chat_app.chatbot as chatbot_module

    seen = []
    real = chatbot_module.generate_stream
    monkeypatch.setattr(chatbot_module, "generate_stream", lambda b, m, *a, **k: seen.append(m) or real(b, m, *a, **k))
    plugins.retrieval.enable = True  # NeuralChat's way: the global registry, before build_chatbot
    plugins.retrieval.args = retrieval(docs, tmp_path)["retrieval"]["args"]
    bot = build_chatbot(PipelineConfig(model_name_or_path=str(tiny_model_dir)))
    try:
        from neural_chat_app import GenerationConfig

        config = GenerationConfig(max_new_tokens=4, do_sample=False)
        chunks, links = bot.predict_stream("How many cores does the Zorblax 9000 have?", config)
        assert isinstance("".join(chunks), str)
        assert Path(links[0]["source"]).name == "zorblax_datasheet.md" and links[0]["score"] > 0.2
        assert "77 cores" in seen[-1][-1]["content"] and "Question: How many cores" in seen[-1][-1]["content"]
        _, links = bot.chat_stream("Which soup does the cafeteria serve on Fridays?", config)
        reply = "".join(_)
        assert Path(links[0]["source"]).name == "cafeteria.txt"
        # the history keeps the user's own words, not the retrieved context
        assert bot.conversations["default"][0] == {
            "role": "user",
            "content": "Which soup does the cafeteria serve on Fridays?",
        }
        assert bot.conversations["default"][1]["content"] == reply
    finally:
        bot.close()


def test_chatbot_refuses_a_flagged_query_without_generating(tiny_model_dir, monkeypatch):
    import neural_chat_app.chatbot as chatbot_module

    bot = build_chatbot(
        PipelineConfig(
            model_name_or_path=str(tiny_model_dir),
            plugins={"safety_checker": {"enable": True, "args": {"terms": ["zorp"], "refusal_message": "No zorp."}}},
        )
    )
    monkeypatch.setattr(chatbot_module, "generate_stream", lambda *a, **k: pytest.fail("generated"))
    try:
        assert bot.predict("tell me about ZORP") == "No zorp."
        assert bot.chat("zorp again") == "No zorp."
        assert bot.conversations["default"][-1] == {"role": "assistant", "content": "No zorp."}
    finally:
        bot.close()


def test_chatbot_masks_sensitive_terms_in_the_reply(tiny_backend, monkeypatch):
    import neural_chat_app.chatbot as chatbot_module
    from neural_chat_app.chatbot import ChatBot
    from neural_chat_app.plugins.pipeline import PluginPipeline

    pieces = ["The code", "word is ze", "bra-42 and", " that is all."]
    monkeypatch.setattr(chatbot_module, "generate_stream", lambda *a, **k: iter(pieces))
    safety = SafetyChecker(SafetyCheckerArgs(terms=["zebra-42"], use_default_terms=False))
    bot = ChatBot(tiny_backend, PipelineConfig(), PluginPipeline(safety=safety))
    assert bot.predict("what is the codeword?") == "The codeword is ******** and that is all."


def test_http_api_returns_sources_and_refusals(make_server, docs, tmp_path):
    import httpx

    plugin_settings = {
        **retrieval(docs, tmp_path),
        "safety_checker": {"enable": True, "args": {"terms": ["zorp"], "refusal_message": "No zorp."}},
    }
    server = make_server(plugins=plugin_settings)
    body = {
        "messages": [{"role": "user", "content": "How many cores does the Zorblax 9000 have?"}],
        "max_tokens": 3,
        "temperature": 0,
    }
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    sources = r.json()["sources"]
    assert Path(sources[0]["source"]).name == "zorblax_datasheet.md" and "77 cores" in sources[0]["text"]

    events = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as s:
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    assert [e for e in events if "sources" in e][0]["sources"] == sources

    refused = {"messages": [{"role": "user", "content": "zorp?"}], "max_tokens": 3}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=refused, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "No zorp."
    assert r.json()["usage"]["completion_tokens"] == 0
    log = server.state.chatlog
    texts = [m["content"] for m in log.messages(r.json()["conversation_id"])]
    assert texts == ["zorp?", "No zorp."]  # the refusal is logged like any reply


def test_server_settings_refuse_unknown_plugin_arguments(make_server, tmp_path):
    with pytest.raises(ValueError, match="input_paths"):
        make_server(plugins={"retrieval": {"enable": True, "args": {"input_paths": "x"}}})
