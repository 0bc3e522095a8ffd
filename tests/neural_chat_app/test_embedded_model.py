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
