"""The OpenAI-compatible API driven by the official `openai` client against a real uvicorn on 127.0.0.1.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/neural_chat_app/test_server_openai.py
"""

from __future__ import annotations

import httpx
import pytest

openai = pytest.importorskip("openai")


def _client(server, key="unused"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_models_lists_the_loaded_model(make_server):
    server = make_server()
    models = _client(server).models.list()
    ids = [m.id for m in models.data]
    assert server.state.models.active.model_id in ids


def test_chat_completion_non_streaming_with_usage(make_server):
    server = make_server()
    reply = _client(server).chat.completions.create(
        model=server.state.models.active.model_id,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=5,
        temperature=0,
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_completion_streaming(make_server):
    server = make_server()
    stream = _client(server).chat.completions.create(
        model="default",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes and finishes[-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 6
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(text, str)


def test_streamed_text_equals_non_streamed_text_when_greedy(make_server):
    server = make_server()
    client = _client(server)
    kwargs = {"model": "default", "messages": [{"role": "user", "content": "abc"}], "max_tokens": 6, "temperature": 0}
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs))
    assert streamed == whole


def test_stop_sequence_is_honoured(make_server):
    # The tiny model emits newlines: a newline stop leaves none in the reply.
    server = make_server()
    reply = _client(server).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=10, temperature=0, stop=["\n"]
    )
    assert "\n" not in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"


def test_completions_endpoint_streaming_and_not(make_server):
    server = make_server()
    client = _client(server)
    reply = client.completions.create(model="default", prompt="The quick brown", max_tokens=4, temperature=0)
    assert reply.object == "text_completion" and isinstance(reply.choices[0].text, str)
    assert reply.usage.completion_tokens <= 4
    chunks = list(client.completions.create(model="default", prompt="The quick", max_tokens=4, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_api_key_required_when_configured(make_server):
    server = make_server(api_keys=["sekret"])
    with pytest.raises(openai.AuthenticationError):
        _client(server, key="wrong").models.list()
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert _client(server, key="sekret").models.list().data
    assert httpx.get(server.url + "/health").status_code == 200  # health stays open for probes


def test_unknown_model_is_404(make_server):
    server = make_server()
    with pytest.raises(openai.NotFoundError) as err:
        _client(server).chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert "no-such-model" in str(err.value)


def test_health_and_metrics(make_server):
    server = make_server()
    _client(server).chat.completions.create(model="default", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    for series in (
        "neuralchat_requests_total",
        "neuralchat_completion_tokens_total",
        "neuralchat_queue_depth",
        "neuralchat_generation_seconds_bucket",
    ):
        assert series in text
    assert 'path="/v1/chat/completions",status="200"' in text
