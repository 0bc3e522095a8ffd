"""Retrieval end to end on the embedded SmolLM2-135M-Instruct and the packaged all-MiniLM-L6-v2 (slow).

OMP_NUM_THREADS=1 PYTHONPATH=. pytest -q -m slow tests/neural_chat_app/test_plugins_embedded.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOCS = Path(__file__).parent / "fixtures" / "docs"
QUESTION = "How many cores does the Zorblax 9000 have?"


def test_retrieval_answers_from_a_local_document(tmp_path):
    from neural_chat_app import GenerationConfig, PipelineConfig, build_chatbot, plugins

    greedy = GenerationConfig(max_new_tokens=40, do_sample=False)
    plugins.reset()
    plugins.retrieval.enable = True
    plugins.retrieval.args = {"input_path": str(DOCS), "persist_directory": str(tmp_path / "index")}
    try:
        chatbot = build_chatbot(PipelineConfig())
    finally:
        plugins.reset()
    try:
        chunks, links = chatbot.predict_stream(QUESTION, greedy)
        answer = "".join(chunks)
        assert Path(links[0]["source"]).name == "zorblax_datasheet.md"
        assert "77" in answer, answer
        # The fact is made up, so the same model without the document does not know it.
        chatbot.plugins = None
        assert "77" not in chatbot.predict(QUESTION, greedy)
    finally:
        chatbot.close()
