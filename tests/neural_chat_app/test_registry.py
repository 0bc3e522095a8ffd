"""The model registry: embedded, fine-tuned and OpenVINO folders, and switching the served model.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/neural_chat_app/test_registry.py
"""

from __future__ import annotations

import json
import shutil

import httpx

from neural_chat_app.registry import list_models


def _models_dir(tmp_path, tiny_model_dir):
    root = tmp_path / "models"
    shutil.copytree(tiny_model_dir, root / "tuned-a" / "merged")
    (root / "tuned-a" / "training_metadata.json").write_text(json.dumps({"task": "chat", "base_model": "tiny"}))
    ov = root / "tiny-ov"
    ov.mkdir()
    for name in ("openvino_model.xml", "openvino_tokenizer.xml"):
        (ov / name).write_text("<net/>")
    (ov / "openvino_export.json").write_text(json.dumps({"weight_format": "int8"}))
    (root / "not-a-model").mkdir()
    return root


def test_lists_embedded_finetuned_and_openvino(tmp_path, tiny_model_dir):
    entries = {e.id: e for e in list_models([_models_dir(tmp_path, tiny_model_dir)])}
    assert entries["smollm2-135m-instruct"].kind == "embedded"
    assert entries["tuned-a"].kind == "finetuned" and entries["tuned-a"].metadata["task"] == "chat"
    assert entries["tiny-ov"].kind == "openvino" and entries["tiny-ov"].backend == "openvino"
    assert entries["tiny-ov"].metadata["weight_format"] == "int8"
    assert "not-a-model" not in entries


def test_running_server_switches_model_on_request(make_server, tmp_path, tiny_model_dir):
    from neural_chat_app.loading import load_backend

    root = _models_dir(tmp_path, tiny_model_dir)
    server = make_server(model_dirs=[str(root)], loader=load_backend)
    listed = [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]
    assert "tuned-a" in listed
    body = {"model": "tuned-a", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200 and reply.json()["model"] == "tuned-a"
    assert httpx.get(server.url + "/health").json()["model"] == "tuned-a"
    loaded = [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"] if m["loaded"]]
    assert loaded == ["tuned-a"]


def test_switch_can_be_refused(make_server, tmp_path, tiny_model_dir):
    server = make_server(model_dirs=[str(_models_dir(tmp_path, tiny_model_dir))], allow_model_switch=False)
    body = {"model": "tuned-a", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).status_code == 404
