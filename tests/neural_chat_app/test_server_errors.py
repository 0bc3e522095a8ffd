"""Every error case of the server answers with an OpenAI-style error body and the right status, never a 500.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/neural_chat_app/test_server_errors.py
"""

from __future__ import annotations

import threading

import httpx
import pytest

CHAT = "/v1/chat/completions"


def _error(response, status):
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["message"] and body["type"]
    return body


def _post(server, body=None, **kwargs):
    return httpx.post(server.url + CHAT, json=body, timeout=60, **kwargs)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -3}, "max_tokens"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 17}, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "top_p": 3}, "top_p"),
    ],
)
def test_wrong_types_are_400(make_server, body, param):
    server = make_server()
    error = _error(_post(server, body), 400)
    assert param in error["message"]


def test_malformed_json_is_400(make_server):
    server = make_server()
    response = httpx.post(server.url + CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert "JSON" in _error(response, 400)["message"]
    _error(httpx.post(server.url + CHAT, content=b"[1, 2]"), 400)


def test_body_over_limit_is_413(make_server):
    server = make_server(limits={"max_body_bytes": 500})
    _error(_post(server, {"messages": [{"role": "user", "content": "x" * 1000}]}), 413)


def test_prompt_over_token_limit_is_400(make_server):
    server = make_server(limits={"max_prompt_tokens": 16})
    error = _error(_post(server, {"messages": [{"role": "user", "content": "hello " * 50}]}), 400)
    assert error["code"] == "context_length_exceeded"


def test_max_tokens_over_limit_is_400(make_server):
    server = make_server(limits={"max_tokens": 8})
    error = _error(_post(server, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 9}), 400)
    assert error["param"] == "max_tokens"


def test_unknown_model_and_route_are_404(make_server):
    server = make_server()
    _error(_post(server, {"model": "nope", "messages": [{"role": "user", "content": "x"}]}), 404)
    _error(httpx.get(server.url + "/v1/nothing-here"), 404)


def test_over_capacity_is_429_and_the_queue_is_bounded(make_server, slow_backend):
    slow = slow_backend
    server = make_server(backend=slow, limits={"max_concurrent": 1, "max_queue": 0, "max_tokens": 400})
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 400, "stream": True}
    with httpx.Client(timeout=60) as client, client.stream("POST", server.url + CHAT, json=body) as first:
        assert first.status_code == 200
        # Hold the line iterator: a discarded one is closed at once, and closing it closes the connection (httpcore
        # closes its stream on GeneratorExit), so the server would rightly free the slot of a client that left.
        lines = first.iter_lines()
        next(lines)
        error = _error(_post(server, {**body, "stream": False}), 429)
        assert error["type"] == "rate_limit_error"
        assert any(line.startswith("data: ") for line in lines), "the admitted stream should still be running"
    assert slow.stopped.wait(30)


def test_client_disconnect_stops_generation(make_server, slow_backend):
    slow = slow_backend
    server = make_server(backend=slow, limits={"max_tokens": 1000})
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000, "stream": True}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", server.url + CHAT, json=body) as response:
            lines = response.iter_lines()
            while "x " not in next(lines):
                pass
            conversation = response.headers["x-conversation-id"]
        # Leaving the block closes the connection mid-stream.
    assert slow.stopped.wait(30), "generation kept running after the client left"
    assert slow.produced < 1000
    log = server.state.chatlog
    for _ in range(100):  # the partial reply is logged once the server noticed the disconnect
        messages = log.messages(conversation)
        if messages[-1]["role"] == "assistant":
            break
        threading.Event().wait(0.1)
    assert messages[-1]["metadata"].get("interrupted") is True


def test_backend_failure_is_an_error_body_not_a_crash(make_server, slow_backend):
    def broken(*args):
        raise RuntimeError("boom")
        yield  # a generator, like real backends

    slow_backend.stream = broken
    server = make_server(backend=slow_backend)
    error = _error(_post(server, {"messages": [{"role": "user", "content": "x"}]}), 500)
    assert "boom" in error["message"]
    assert httpx.get(server.url + "/health").status_code == 200


def _raw_post(server, body: bytes, declared: int | None = None) -> tuple[int, dict]:
    """POST over a plain socket, sending the whole body the way a naive client does, then read the answer: a
    server that answers early and closes makes this fail with a connection reset, as it did for curl."""
    import json
    import socket
    from urllib.parse import urlparse

    url = urlparse(server.url)
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if declared is None else declared}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(head)
        for start in range(0, len(body), 65536):
            sock.sendall(body[start:start + 65536])
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1] or b"{}")


@pytest.mark.parametrize("name, body, status, words", [
    ("nested 5,000 levels", b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested too deeply"),
    ("a lone surrogate", b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', 400, "lone surrogate"),
    ("invalid UTF-8", b'{"messages": [{"role": "user", "content": "caf\xe9 \xff"}]}', 400, "UTF-8"),
    ("just over the body limit", b'{"messages": [{"role": "user", "content": "' + b"x" * 1_000_100 + b'"}]}', 413,
     "limit"),
])
def test_hostile_bodies_get_a_4xx_and_the_server_keeps_answering(make_server, name, body, status, words):
    server = make_server()
    got, answer = _raw_post(server, body)
    assert got == status, (name, answer)
    assert words in answer["error"]["message"], answer
    ok = _post(server, {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2})
    assert ok.status_code == 200, ok.text


def test_a_lone_surrogate_is_named_by_its_field(make_server):
    server = make_server()
    _, answer = _raw_post(server, b'{"messages": [{"role": "user", "content": "\\udc00"}]}')
    assert answer["error"]["param"] == "messages.0.content"
