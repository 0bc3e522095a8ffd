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


def test_neuralchat_completion_task_answers_on_the_instruct_model():
    """NeuralChat's completion task on an instruct model: the query is answered as an instruction (it returned an
    empty string as plain text), while 'text' still continues the text as given, as /v1/completions does."""
    from neural_chat_app import GenerationConfig, PipelineConfig, build_chatbot
    from neural_chat_app.prompts import prompt_ids

    bot = build_chatbot(PipelineConfig())
    query = "Tell me about Intel Xeon Scalable Processors."
    answer = bot.predict(query=query, config=GenerationConfig(max_new_tokens=32, task="completion", do_sample=False))
    assert len(answer.split()) >= 8 and ("Xeon" in answer or "processor" in answer.lower()), answer
    tokenizer = bot.backend.tokenizer
    assert tokenizer.decode(prompt_ids(tokenizer, [{"role": "user", "content": query}], "text")) == query
    bot.close()
