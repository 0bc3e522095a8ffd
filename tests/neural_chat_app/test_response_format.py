"""Constrained decoding (`response_format`) on predict and on the OpenAI-compatible API, on the tiny model.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q tests/neural_chat_app/test_response_format.py
"""

from __future__ import annotations

import json

import httpx
import pytest

from neural_chat_app import GenerationConfig
from neural_chat_app.structured import json_schema_of

SCHEMA = {"type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}, "ok": {"type": "boolean"}},
          "required": ["mood", "ok"], "additionalProperties": False}
OPENAI_FORMAT = {"type": "json_schema", "json_schema": {"name": "mood", "schema": SCHEMA, "strict": True}}


def _check(text: str) -> None:
    reply = json.loads(text)  # a random tiny model writes this only because decoding is constrained
    assert set(reply) == {"mood", "ok"} and reply["mood"] in ("happy", "sad") and isinstance(reply["ok"], bool)


def test_response_format_forms():
    assert json_schema_of(None) is None and json_schema_of({"type": "text"}) is None
    assert json_schema_of({"type": "json_object"}) == {"type": "object"}
    assert json_schema_of(OPENAI_FORMAT) == SCHEMA and json_schema_of(SCHEMA) == SCHEMA
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        GenerationConfig(response_format={"type": "objekt"})
    with pytest.raises(ValueError, match="json_schema.schema"):
        GenerationConfig(response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    with pytest.raises(ValueError, match="must be a JSON Schema object"):
        GenerationConfig(response_format="json")


@pytest.mark.parametrize("config", [GenerationConfig(do_sample=False, max_new_tokens=40),
                                    GenerationConfig(max_new_tokens=40, temperature=0.9, top_k=5, top_p=0.5, seed=1)])
def test_predict_with_schema_returns_matching_json(tiny_bot, config):
    _check(tiny_bot.predict("How do you feel?", config, response_format=SCHEMA))
    _check(tiny_bot.predict("How do you feel?", GenerationConfig(**{**config.__dict__, "response_format":
                                                                     OPENAI_FORMAT})))


def test_without_response_format_the_tiny_model_is_not_json(tiny_bot):
    text = tiny_bot.predict("How do you feel?", GenerationConfig(do_sample=False, max_new_tokens=40))
    with pytest.raises(ValueError):
        _check(text)


def test_http_api_response_format(make_server):
    server = make_server()
    body = {"messages": [{"role": "user", "content": "mood?"}], "max_tokens": 40, "temperature": 0,
            "response_format": OPENAI_FORMAT}
    reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200
    _check(reply.json()["choices"][0]["message"]["content"])
    bad = {**body, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}}
    reply = httpx.post(server.url + "/v1/chat/completions", json=bad, timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "response_format"
