"""Fixtures for neural_chat_app tests: a chatbot on the tiny llama from tests/conftest.py."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_bot(tiny_model_dir):
    from neural_chat_app import PipelineConfig, build_chatbot

    bot = build_chatbot(PipelineConfig(model_name_or_path=str(tiny_model_dir)))
    yield bot
    bot.close()
