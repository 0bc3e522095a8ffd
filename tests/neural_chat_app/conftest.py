"""Fixtures for neural_chat_app tests: a chatbot on the tiny llama from tests/conftest.py."""

from __future__ import annotations

import threading
import time

import pytest


@pytest.fixture(scope="module")
def tiny_bot(tiny_model_dir):
    from neural_chat_app import PipelineConfig, build_chatbot

    bot = build_chatbot(PipelineConfig(model_name_or_path=str(tiny_model_dir)))
    yield bot
    bot.close()


class RunningServer:
    """A real uvicorn on 127.0.0.1 in a background thread, on a socket bound to a free port."""

    def __init__(self, app):
        import socket
        import threading

        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        import time

        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return self
            time.sleep(0.02)
        raise RuntimeError("uvicorn did not start")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    @property
    def state(self):
        return self.app.state.server


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir):
    from neural_chat_app import PipelineConfig
    from neural_chat_app.loading import load_backend

    backend = load_backend(PipelineConfig(model_name_or_path=str(tiny_model_dir)))
    backend.close = lambda: None  # shared by every server in the module
    return backend


@pytest.fixture
def make_server(tiny_backend, tmp_path):
    """make_server(**settings) -> a started RunningServer on the tiny model, with a log in tmp_path."""
    from neural_chat_app.server import create_app, load_settings

    servers = []

    def make(backend=None, loader=None, **overrides):
        overrides.setdefault("chat_log", {"enabled": True, "path": str(tmp_path / "chatlog.sqlite")})
        overrides.setdefault("model_dirs", [])
        settings = load_settings(None, **overrides)
        server = RunningServer(create_app(settings, backend=backend or tiny_backend, loader=loader))
        servers.append(server.__enter__())
        return server

    yield make
    for server in servers:
        server.__exit__(None, None, None)


class SlowBackend:
    kind = "fake"
    max_concurrency = 1

    def __init__(self, tokenizer, model_id: str = "slow", delay: float = 0.02):
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.delay = delay
        self.stopped = threading.Event()
        self.started = threading.Event()
        self.produced = 0

    def stream(self, prompt_ids, config, result, cancel):
        result.prompt_tokens = len(prompt_ids)
        self.started.set()
        try:
            for _ in range(config.max_new_tokens):
                if cancel.is_set():
                    return
                time.sleep(self.delay)
                self.produced += 1
                result.completion_tokens += 1
                result.mark_token()
                yield "x "
            result.finish_reason = "length"
        finally:
            result.finished_at = time.perf_counter()
            self.stopped.set()

    def close(self):
        pass


@pytest.fixture
def slow_backend(tiny_backend):
    """A SlowBackend (streams "x " every 50 ms, records when it stopped) with the tiny tokenizer."""
    return SlowBackend(tiny_backend.tokenizer, delay=0.05)
