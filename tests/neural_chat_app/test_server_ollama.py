"""Ollama's API (/api/chat, /api/generate, tags, show, ps, version) driven by the official `ollama` client against a
real uvicorn on 127.0.0.1, on the tiny random model. The embeddings endpoints are in test_server_embeddings.py.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q -m integration tests/neural_chat_app/test_server_ollama.py
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

ollama = pytest.importorskip("ollama")
pytestmark = pytest.mark.integration

GREEDY = {"num_predict": 5, "temperature": 0}
SCHEMA = {"type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}, "ok": {"type": "boolean"}},
          "required": ["mood", "ok"], "additionalProperties": False}


def _client(server, **kwargs):
    return ollama.Client(host=server.url, timeout=60, **kwargs)


def _name(server) -> str:
    return server.state.models.active.model_id + ":latest"


def test_chat_not_streamed_has_ollamas_counters(make_server):
    server = make_server()
    reply = _client(server).chat(model=_name(server), messages=[{"role": "user", "content": "hello"}], options=GREEDY)
    assert reply.model == _name(server) and reply.done and reply.done_reason in ("stop", "length")
    assert reply.message.role == "assistant" and isinstance(reply.message.content, str)
    assert 0 < reply.eval_count <= 5 and reply.prompt_eval_count > 1
    assert reply.total_duration >= reply.prompt_eval_duration + reply.eval_duration > 0
    assert reply.load_duration == 0  # the model was loaded already


def test_chat_streamed_is_ndjson_and_equals_the_whole_reply(make_server):
    server = make_server()
    client = _client(server)
    kwargs = {"model": _name(server), "messages": [{"role": "user", "content": "abc"}], "options": GREEDY}
    whole = client.chat(**kwargs).message.content
    parts = list(client.chat(stream=True, **kwargs))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert parts[-1].done_reason in ("stop", "length") and parts[-1].eval_count <= 5
    assert "".join(p.message.content for p in parts) == whole
    # Ollama streams by default: without "stream", the body is NDJSON, the last line done.
    with httpx.stream("POST", server.url + "/api/chat", json={"model": _name(server), "messages":
                      [{"role": "user", "content": "abc"}], "options": GREEDY}, timeout=60) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and "".join(x["message"]["content"] for x in lines) == whole


def test_generate_streamed_and_not_and_raw(make_server):
    server = make_server()
    client = _client(server)
    reply = client.generate(model=_name(server), prompt="The quick brown", options=GREEDY)
    assert reply.done and isinstance(reply.response, str) and reply.eval_count <= 5
    streamed = list(client.generate(model=_name(server), prompt="The quick brown", options=GREEDY, stream=True))
    assert streamed[-1].done and "".join(p.response for p in streamed) == reply.response
    raw = client.generate(model=_name(server), prompt="The quick brown", raw=True, options=GREEDY)
    tokenizer = server.state.models.active.tokenizer
    assert raw.prompt_eval_count == len(tokenizer("The quick brown")["input_ids"])  # the prompt as given
    assert reply.prompt_eval_count > raw.prompt_eval_count  # the chat template's user turn
    with_system = client.generate(model=_name(server), prompt="The quick brown", system="Be brief.", options=GREEDY)
    assert with_system.prompt_eval_count > reply.prompt_eval_count


def test_format_json_and_schema_give_parseable_json(make_server):
    server = make_server()
    client = _client(server)
    options = {"num_predict": 40, "temperature": 0}
    reply = client.chat(model=_name(server), messages=[{"role": "user", "content": "mood?"}], format=SCHEMA,
                        options=options)
    data = json.loads(reply.message.content)  # a random tiny model writes this only because decoding is constrained
    assert set(data) == {"mood", "ok"} and data["mood"] in ("happy", "sad")
    reply = client.generate(model=_name(server), prompt="mood?", format="json", options=options)
    assert isinstance(json.loads(reply.response), dict)


def test_options_are_honoured(make_server):
    server = make_server()
    client = _client(server)
    kwargs = {"model": _name(server), "messages": [{"role": "user", "content": "hi"}]}
    reply = client.chat(**kwargs, options={"num_predict": 10, "temperature": 0, "stop": ["\n"]})
    assert "\n" not in reply.message.content
    sampled = [client.chat(**kwargs, options={"num_predict": 6, "temperature": 1.0, "seed": 7, "top_k": 50,
                                              "top_p": 0.9, "repeat_penalty": 1.2}).message.content for _ in range(2)]
    assert sampled[0] == sampled[1]  # the seed is honoured
    prompt = client.chat(**kwargs, options=GREEDY).prompt_eval_count
    bounded = client.chat(**kwargs, options={"num_predict": 20, "temperature": 0, "num_ctx": prompt + 3})
    assert bounded.eval_count <= 3  # prompt + reply within num_ctx
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(**kwargs, options={"num_ctx": prompt})
    assert err.value.status_code == 400 and "num_ctx" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(**kwargs, options={"num_predict": 10**6})
    assert err.value.status_code == 400 and "num_predict" in err.value.error
    penalised = client.chat(**kwargs, options={**GREEDY, "presence_penalty": 1.5, "frequency_penalty": 1.5})
    assert penalised.done
    # Off-values of options this server does not implement are what it does anyway.
    assert client.chat(**kwargs, options={**GREEDY, "mirostat": 0, "typical_p": 1.0}).done


def test_logprobs(make_server):
    server = make_server()
    client = _client(server)
    kwargs = {"model": _name(server), "messages": [{"role": "user", "content": "hi"}], "options": GREEDY,
              "logprobs": True, "top_logprobs": 2}
    whole = client.chat(**kwargs)
    assert 0 < len(whole.logprobs) <= whole.eval_count
    assert "".join(t.token for t in whole.logprobs) == whole.message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in whole.logprobs)
    assert whole.logprobs[0].top_logprobs[0].logprob >= whole.logprobs[0].logprob  # greedy: the best token
    streamed = [t for part in client.chat(stream=True, **kwargs) for t in part.logprobs or []]
    assert [t.token for t in streamed] == [t.token for t in whole.logprobs]
    generated = client.generate(model=_name(server), prompt="The quick", options=GREEDY, logprobs=True)
    assert generated.logprobs and all(t.top_logprobs == [] for t in generated.logprobs)


class FixedTextBackend:
    """Streams one reply, a few characters at a time, whatever the prompt: tool-call parsing is under test."""

    kind = "fake"
    max_concurrency = 1

    def __init__(self, tokenizer, text: str):
        self.tokenizer, self.text, self.model_id = tokenizer, text, "fixed"

    def stream(self, prompt_ids, config, result, cancel):
        result.prompt_tokens = len(prompt_ids)
        for start in range(0, len(self.text), 5):
            result.completion_tokens += 1
            result.mark_token()
            yield self.text[start : start + 5]
        result.finished_at = time.perf_counter()

    def close(self):
        pass


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "required": ["city"],
                                                           "properties": {"city": {"type": "string"}}}}}


def test_tool_calls(make_server, tiny_backend):
    text = 'Let me check.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    server = make_server(backend=FixedTextBackend(tiny_backend.tokenizer, text))
    client = _client(server)
    kwargs = {"model": "fixed", "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER]}
    reply = client.chat(**kwargs)
    assert reply.message.content == "Let me check."
    assert [(c.function.name, c.function.arguments) for c in reply.message.tool_calls] == [
        ("get_weather", {"city": "Paris"})]
    parts = list(client.chat(stream=True, **kwargs))
    assert "".join(p.message.content for p in parts) == "Let me check."
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    # The call and its result go back in the conversation, in Ollama's shapes.
    follow = [*kwargs["messages"], {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "22 C and sunny", "tool_name": "get_weather"}]
    assert client.chat(model="fixed", messages=follow, tools=[WEATHER]).done
    # Without tools the same text is plain content.
    assert "<tool_call>" in client.chat(model="fixed", messages=kwargs["messages"]).message.content


def test_a_tool_result_names_its_call_by_the_id_the_reply_gave(make_server, tiny_backend):
    """Newer Ollama's shapes (raw: ollama-python 0.6 has no tool_call_id): a reply's calls carry an id and an index,
    and a result sent back with that id as tool_call_id is taken; on any other message it is refused by name."""
    import httpx

    text = ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>')
    server = make_server(backend=FixedTextBackend(tiny_backend.tokenizer, text))
    ask = [{"role": "user", "content": "Weather in Paris and Rome?"}]
    body = {"model": "fixed", "messages": ask, "tools": [WEATHER], "stream": False}
    reply = httpx.post(server.url + "/api/chat", json=body, timeout=60).json()["message"]
    calls = reply["tool_calls"]
    assert [(c["function"]["index"], c["function"]["arguments"]["city"]) for c in calls] == [(0, "Paris"), (1, "Rome")]
    assert len({c["id"] for c in calls}) == 2 and all(c["id"].startswith("call_") for c in calls)
    results = [{"role": "tool", "tool_call_id": c["id"], "content": city} for c, city in zip(calls, ("9 C", "19 C"))]
    follow = {**body, "messages": [*ask, reply, *results[::-1]]}  # in the other order: matched by id
    assert httpx.post(server.url + "/api/chat", json=follow, timeout=60).json()["done"]
    bad = {**body, "messages": [{**ask[0], "tool_call_id": "x"}]}
    refused = httpx.post(server.url + "/api/chat", json=bad, timeout=60)
    assert refused.status_code == 400 and "messages.0.tool_call_id (only tool results" in refused.json()["error"]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"options": {"mirostat": 2}}, "options.mirostat"),
        ({"options": {"num_gpu": 1, "typical_p": 0.5}}, "options.num_gpu"),
        ({"options": {"tfs_z": 0.5}}, "options.tfs_z"),
        ({"top_logprobs": 3}, "logprobs"),
        ({"think": True}, "think"),
        ({"keep_alive": 0}, "keep_alive"),
    ],
)
def test_unsupported_fields_are_refused_by_name(make_server, kwargs, named):
    server = make_server()
    with pytest.raises(ollama.ResponseError) as err:
        _client(server).chat(model=_name(server), messages=[{"role": "user", "content": "x"}], **kwargs)
    assert err.value.status_code == 400 and named in err.value.error


def test_refusals_are_ollama_error_bodies(make_server):
    server = make_server()
    url = server.url
    cases = [
        ("/api/generate", {"model": _name(server), "prompt": "x", "suffix": "y"}, "suffix"),
        ("/api/generate", {"model": _name(server), "prompt": "x", "template": "{{ .Prompt }}"}, "template"),
        ("/api/generate", {"model": _name(server), "prompt": "x", "raw": True, "system": "s"}, "system"),
        ("/api/generate", {"model": _name(server), "prompt": "x", "images": ["aGk="]}, "images"),
        ("/api/generate", {"model": _name(server), "prompt": "x", "format": "yaml"}, "format"),
        ("/api/chat", {"model": _name(server), "messages": [{"role": "user", "content": "x"}], "mystery": 1},
         "mystery"),
        ("/api/chat", {"model": _name(server), "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
         "messages.0.images"),
        ("/api/chat", {"model": _name(server), "messages": [{"role": "assistant", "content": "x"}]}, "last message"),
    ]
    for path, body, named in cases:
        reply = httpx.post(url + path, json=body, timeout=60)
        assert reply.status_code == 400, (path, body)
        assert list(reply.json()) == ["error"] and named in reply.json()["error"], reply.json()
    reply = httpx.post(url + "/api/chat", content=b"{not json", timeout=60)
    assert reply.status_code == 400 and isinstance(reply.json()["error"], str)
    # The OpenAI routes keep OpenAI's error shape.
    reply = httpx.post(url + "/v1/chat/completions", json={"messages": []}, timeout=60)
    assert reply.status_code == 400 and "message" in reply.json()["error"]


def test_model_names_and_unknown_model(make_server):
    server = make_server()
    client = _client(server)
    bare = server.state.models.active.model_id
    for name in (bare, bare + ":latest"):
        assert client.generate(model=name, prompt="x", options=GREEDY).done
    loaded = client.chat(model=bare, messages=[])  # Ollama's way to load a model
    assert loaded.done and loaded.done_reason == "load"
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="no-such-model:7b", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404 and "no-such-model" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="all-minilm-l6-v2", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 400 and "embedding model" in err.value.error


def test_api_key_is_checked_with_an_ollama_error(make_server):
    server = make_server(api_keys=["sekret"])
    with pytest.raises(ollama.ResponseError) as err:
        _client(server).list()
    assert err.value.status_code == 401 and "API key" in err.value.error
    assert _client(server, headers={"Authorization": "Bearer sekret"}).list().models


def test_tags_show_ps_version(make_server):
    server = make_server()
    client = _client(server)
    tags = {m.model: m for m in client.list().models}
    assert set(tags) >= {_name(server), "all-minilm-l6-v2:latest"}
    mine = tags[_name(server)]
    assert mine.details.family == "llama" and mine.details.parameter_size.endswith(("K", "M"))
    assert mine.details.quantization_level in ("F32", "BF16") and mine.size > 0 and len(mine.digest) == 64
    assert tags["all-minilm-l6-v2:latest"].details.family == "bert"

    shown = client.show(_name(server))
    assert shown.capabilities == ["completion"] and "<|im_start|>" in shown.template
    assert shown.modelinfo["general.architecture"] == "llama" and shown.modelinfo["llama.block_count"] == 2
    assert "temperature" in shown.parameters
    assert client.show("all-minilm-l6-v2").capabilities == ["embedding"]
    with pytest.raises(ollama.ResponseError) as err:
        client.show("nothing-here")
    assert err.value.status_code == 404

    running = client.ps().models
    assert [m.model for m in running] == [_name(server)] and running[0].expires_at.year > 2100
    assert httpx.get(server.url + "/api/version").json()["version"].count(".") == 2


def test_model_management_is_refused(make_server):
    server = make_server()
    with pytest.raises(ollama.ResponseError) as err:
        _client(server).pull("llama3")
    assert err.value.status_code == 501 and "/api/tags" in err.value.error
