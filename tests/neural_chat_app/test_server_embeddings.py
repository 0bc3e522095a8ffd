"""The embeddings endpoints, /v1/embeddings through the official `openai` client and /api/embed through the
`ollama` client, on the real packaged all-MiniLM-L6-v2 (one server for the module: the model loads once, ~7 s).

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q -m integration tests/neural_chat_app/test_server_embeddings.py
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")
pytestmark = pytest.mark.integration

MODEL = "all-minilm-l6-v2"
CAT, KITTEN, TAXES = "The cat sits on the mat.", "A kitten is resting on a rug.", "Corporate tax filing deadlines."


@pytest.fixture(scope="module")
def server(tiny_backend):
    from neural_chat_app.server import create_app, load_settings
    from tests.neural_chat_app.conftest import RunningServer

    settings = load_settings(None, chat_log={"enabled": False}, model_dirs=[])
    with RunningServer(create_app(settings, backend=tiny_backend)) as running:
        yield running


def _openai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _vectors(reply) -> np.ndarray:
    return np.array([d.embedding for d in reply.data], dtype=np.float32)


def test_the_model_is_listed_before_it_loads(server):
    listed = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
    assert listed[MODEL]["kind"] == "embedding" and listed[MODEL]["metadata"]["dimensions"] == 384
    assert not listed[MODEL]["metadata"]["loaded"] and listed[MODEL]["loaded"] is False  # `loaded`: the chat model
    assert _openai(server).models.retrieve(MODEL).id == MODEL


def test_openai_float_embeddings_are_real_sentence_embeddings(server):
    reply = _openai(server).embeddings.create(model=MODEL, input=[CAT, KITTEN, TAXES], encoding_format="float")
    vectors = _vectors(reply)
    assert vectors.shape == (3, 384) and [d.index for d in reply.data] == [0, 1, 2]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.5 and unrelated < 0.2  # MiniLM: 0.64 and -0.02
    assert reply.model == MODEL and reply.usage.prompt_tokens == reply.usage.total_tokens > 10
    assert httpx.get(server.url + "/v1/models").json()["data"][-1]["metadata"]["loaded"]


def test_openai_base64_equals_float_and_token_ids_equal_text(server):
    client = _openai(server)
    floats = _vectors(client.embeddings.create(model="default", input=CAT, encoding_format="float"))
    # The client asks for base64 unless told otherwise, and decodes it.
    b64 = _vectors(client.embeddings.create(model=MODEL, input=CAT))
    raw = httpx.post(server.url + "/v1/embeddings", json={"input": CAT, "encoding_format": "base64"}).json()
    assert isinstance(raw["data"][0]["embedding"], str)
    np.testing.assert_array_equal(floats, b64)
    tokenizer = server.app.state.embedding_model.embedder.tokenizer
    ids = tokenizer(CAT, add_special_tokens=False)["input_ids"]
    from_ids = _vectors(client.embeddings.create(model=MODEL, input=[ids, ids], encoding_format="float"))
    np.testing.assert_allclose(from_ids, np.vstack([floats, floats]), atol=1e-5)
    one = _vectors(client.embeddings.create(model=MODEL, input=ids, encoding_format="float"))
    np.testing.assert_allclose(one, floats, atol=1e-5)


def test_openai_refusals(server):
    client = _openai(server)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input=CAT, dimensions=256)
    assert "dimensions" in str(err.value)
    assert len(client.embeddings.create(model=MODEL, input=CAT, dimensions=384).data[0].embedding) == 384
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="text-embedding-3-small", input=CAT)
    assert "/v1/models" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input=["ok", "word " * 400])
    assert "input.1" in str(err.value) and "256" in str(err.value)  # refused, not cut
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input=[[1, 10**6]])
    assert "vocabulary" in str(err.value)
    for bad in ([], [""], ""):
        reply = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": bad})
        assert reply.status_code == 400 and "empty" in reply.json()["error"]["message"]


def test_ollama_embed(server):
    client = ollama.Client(host=server.url, timeout=120)
    reply = client.embed(model="all-minilm", input=[CAT, TAXES])
    vectors = np.array(reply.embeddings, dtype=np.float32)
    expected = _vectors(_openai(server).embeddings.create(model=MODEL, input=[CAT, TAXES], encoding_format="float"))
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert reply.prompt_eval_count > 5 and reply.total_duration > 0
    assert len(client.embed(model=MODEL + ":latest", input=CAT).embeddings) == 1
    assert client.embed(model=MODEL, input="").embeddings == []

    long = "word " * 400
    assert client.embed(model=MODEL, input=long).prompt_eval_count == 256  # truncate (the default) cuts it
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model=MODEL, input=["ok", long], truncate=False)
    assert err.value.status_code == 400 and "input.1" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model=MODEL, input=CAT, options={"num_ctx": 128})
    assert err.value.status_code == 400 and "options.num_ctx" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model=MODEL, input=CAT, dimensions=64)
    assert err.value.status_code == 400 and "dimensions" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model="smollm2", input=CAT)
    assert err.value.status_code == 404 and "/v1/models" in err.value.error

    old = client.embeddings(model=MODEL, prompt=CAT).embedding
    np.testing.assert_allclose(old, expected[0], atol=1e-6)
    assert MODEL + ":latest" in [m.model for m in client.ps().models]
