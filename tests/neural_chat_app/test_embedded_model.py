"""The compatibility contract with the real embedded SmolLM2-135M-Instruct (slow: loads 135M parameters).

Run: OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q -m slow tests/neural_chat_app/test_embedded_model.py
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_neuralchat_snippet_runs_with_only_imports_changed(capsys):
    # ../shared/seeds/004_aa322df138ab1cdb.txt, with the two import lines changed.
    from neural_chat_app import MixedPrecisionConfig, PipelineConfig, build_chatbot

    config = PipelineConfig(optimization_config=MixedPrecisionConfig())
    chatbot = build_chatbot(config)
    response = chatbot.predict(query="what is intel")
    print(response)
    assert isinstance(response, str) and response.strip()
    assert response.strip() in capsys.readouterr().out
    chatbot.close()


def test_openai_client_against_the_embedded_model(tmp_path):
    openai = pytest.importorskip("openai")
    from neural_chat_app.server import create_app, load_settings
    from tests.neural_chat_app.conftest import RunningServer

    settings = load_settings(None, model_dirs=[], chat_log={"path": str(tmp_path / "log.sqlite")})
    with RunningServer(create_app(settings)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        reply = client.chat.completions.create(model="default", messages=messages, max_tokens=24, temperature=0)
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model="default", messages=messages, max_tokens=24, temperature=0, stream=True
            )
        )
    assert reply.model == "smollm2-135m-instruct"
    assert reply.choices[0].message.content.strip()
    assert streamed == reply.choices[0].message.content
