"""export_openvino on the tiny llama, and the OpenVINO backend (continuous batching) serving the result.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/quantize/test_openvino_export.py
"""

from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("openvino_genai")
pytest.importorskip("optimum.intel")

from quantize.openvino import export_openvino, is_openvino_folder  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_ov_dir(tiny_model_dir, tmp_path_factory):
    return export_openvino(tiny_model_dir, tmp_path_factory.mktemp("ov") / "tiny-ov", weight_format="int8")


def test_export_writes_a_servable_folder(tiny_ov_dir):
    assert is_openvino_folder(tiny_ov_dir)
    assert (tiny_ov_dir / "openvino_detokenizer.xml").is_file()
    meta = json.loads((tiny_ov_dir / "openvino_export.json").read_text())
    assert meta["weight_format"] == "int8"
    assert meta["fused_projection_groups"] == 2  # q/k/v of both layers: tests/quantize/test_projection_fusion.py
    assert not list(tiny_ov_dir.parent.glob("*.tmp-*"))  # the temporary folder was renamed, not left behind


def test_export_rejects_bad_input(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="weight_format"):
        export_openvino(tiny_model_dir, tmp_path / "x", weight_format="int2")
    with pytest.raises(FileNotFoundError, match="config.json"):
        export_openvino(tmp_path, tmp_path / "y")


def test_missing_optimum_says_what_to_install(monkeypatch, tiny_model_dir, tmp_path):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("optimum"):
            raise ImportError("No module named 'optimum'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install"):
        export_openvino(tiny_model_dir, tmp_path / "z")


def test_openvino_chatbot_streams_and_stops(tiny_ov_dir):
    from neural_chat_app import GenerationConfig, PipelineConfig, build_chatbot
    from neural_chat_app.prompts import prompt_ids
    from neural_chat_app.streaming import StreamResult

    bot = build_chatbot(PipelineConfig(model_name_or_path=str(tiny_ov_dir)))
    try:
        assert bot.backend.kind == "openvino"
        config = GenerationConfig(do_sample=False, max_new_tokens=6)
        chunks, links = bot.predict_stream("hello", config)
        assert links == [] and "".join(chunks) == bot.predict("hello", config)
        result, cancel = StreamResult(), threading.Event()
        ids = prompt_ids(bot.backend.tokenizer, [{"role": "user", "content": "hi"}], "chat")
        stream = bot.backend.stream(ids, GenerationConfig(do_sample=False, max_new_tokens=400), result, cancel)
        next(stream)
        cancel.set()
        list(stream)
        assert result.completion_tokens < 400
    finally:
        bot.close()


def test_openvino_server_runs_concurrent_streams(tiny_ov_dir, tmp_path):
    import httpx

    from neural_chat_app.server import create_app, load_settings
    from tests.neural_chat_app.conftest import RunningServer

    settings = load_settings(
        None, model=str(tiny_ov_dir), backend="openvino", model_dirs=[], chat_log={"path": str(tmp_path / "l.db")}
    )
    app = create_app(settings)
    results: list[dict] = []

    def ask(url, i):
        body = {"messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 8}
        results.append(httpx.post(url + "/v1/chat/completions", json=body, timeout=120).json())

    with RunningServer(app) as server:
        assert server.state.admission.max_concurrent == 8
        threads = [threading.Thread(target=ask, args=(server.url, i)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 4
    assert all(0 < r["usage"]["completion_tokens"] <= 8 for r in results)


def _ask(backend, max_new_tokens=6):
    from neural_chat_app import GenerationConfig
    from neural_chat_app.streaming import StreamResult

    ids = backend.tokenizer("hello there", add_special_tokens=False)["input_ids"]
    return "".join(backend.stream(ids, GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens),
                                  StreamResult(), threading.Event()))


def test_the_engine_runs_in_its_own_process_and_stops_with_the_backend(tiny_ov_dir):
    import gc
    import os

    from neural_chat_app.openvino_backend import OpenVINOBackend

    backend = OpenVINOBackend(tiny_ov_dir, "tiny")
    engine = backend._engine.process
    assert engine.pid != os.getpid() and engine.poll() is None
    assert _ask(backend)
    backend.close()
    assert engine.poll() is not None
    # dropped without close(), as a notebook cell run twice drops it: the engine still stops
    dropped = OpenVINOBackend(tiny_ov_dir, "tiny")
    engine = dropped._engine.process
    del dropped
    gc.collect()
    assert engine.poll() is not None


def test_a_dead_engine_fails_the_requests_in_it_and_the_next_request_starts_a_new_one(tiny_ov_dir):
    import os
    import signal

    from neural_chat_app import GenerationConfig
    from neural_chat_app.openvino_backend import OpenVINOBackend
    from neural_chat_app.streaming import StreamResult

    backend = OpenVINOBackend(tiny_ov_dir, "tiny")
    try:
        first = backend._engine.process
        expected = _ask(backend)
        os.kill(first.pid, signal.SIGSTOP)  # the request below is sent, and then the engine dies holding it
        ids = backend.tokenizer("hello there", add_special_tokens=False)["input_ids"]
        stream = backend.stream(ids, GenerationConfig(do_sample=False, max_new_tokens=6), StreamResult(),
                                threading.Event())
        killer = threading.Timer(0.5, os.kill, (first.pid, signal.SIGKILL))
        killer.start()
        with pytest.raises(RuntimeError, match="engine process exited .*the next request starts a new one"):
            "".join(stream)
        killer.join()
        assert _ask(backend) == expected  # no server restart needed
        assert backend._engine.process.pid != first.pid and backend._engine.process.poll() is None
    finally:
        backend.close()


def test_a_model_openvino_cannot_load_is_named_and_leaves_no_process(tiny_ov_dir, tmp_path):
    import shutil

    from neural_chat_app.openvino_backend import OpenVINOBackend

    broken = shutil.copytree(tiny_ov_dir, tmp_path / "broken")
    (broken / "openvino_model.xml").write_text("<net name='cut short'")
    with pytest.raises(RuntimeError, match="OpenVINO could not load .*broken"):
        OpenVINOBackend(broken, "broken")


def test_a_script_that_builds_the_chatbot_at_top_level_runs(tiny_ov_dir, tmp_path):
    """No `if __name__ == "__main__"` guard, as users write: the engine must not re-run the script."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "chat.py"
    script.write_text(
        "from neural_chat_app import GenerationConfig, PipelineConfig, build_chatbot\n"
        f"bot = build_chatbot(PipelineConfig(model_name_or_path={str(tiny_ov_dir)!r}))\n"
        "print('REPLY', repr(bot.predict('hello', GenerationConfig(do_sample=False, max_new_tokens=4))))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("REPLY") == 1


def test_prefix_caching_reuses_earlier_turns_without_changing_the_replies(tiny_ov_dir):
    from neural_chat_app import GenerationConfig
    from neural_chat_app.openvino_backend import OpenVINOBackend
    from neural_chat_app.prompts import prompt_ids
    from neural_chat_app.streaming import StreamResult

    def conversation(backend):
        messages, replies = [{"role": "system", "content": "You answer questions about the Aurora X2 e-bike."}], []
        for question in ["How heavy is it?", "And the battery?", "Is it waterproof?"]:
            messages.append({"role": "user", "content": question})
            ids = prompt_ids(backend.tokenizer, messages, "chat")
            reply = "".join(backend.stream(ids, GenerationConfig(do_sample=False, max_new_tokens=12), StreamResult(),
                                           threading.Event()))
            messages.append({"role": "assistant", "content": reply})
            replies.append(reply)
        return replies

    cached, plain = OpenVINOBackend(tiny_ov_dir, "tiny"), OpenVINOBackend(tiny_ov_dir, "tiny", prefix_caching=False)
    try:
        assert conversation(cached) == conversation(plain)
        assert conversation(cached) == conversation(plain)  # the second time every turn starts from the cache
    finally:
        cached.close()
        plain.close()
