"""Chat with a local model: NeuralChat's `build_chatbot` API, an OpenAI-compatible server and a web page.

`import neural_chat_app` stays light: OpenVINO, FastAPI and the model itself load only when used.
"""

import finetune  # noqa: F401  first, so a mismatched torchvision is hidden (finetune/torchvision_guard.py)
from neural_chat_app.chatbot import ChatBot, build_chatbot
from neural_chat_app.config import (
    GenerationConfig,
    LoadingModelConfig,
    MixedPrecisionConfig,
    PipelineConfig,
    WeightOnlyQuantConfig,
)
from neural_chat_app.plugins import plugins  # NeuralChat's registry: plugins.retrieval.enable = True

__all__ = [
    "BitsAndBytesConfig",
    "ChatBot",
    "GenerationConfig",
    "LoadingModelConfig",
    "MixedPrecisionConfig",
    "PipelineConfig",
    "WeightOnlyQuantConfig",
    "build_chatbot",
    "plugins",
]


def __getattr__(name: str):
    # transformers' BitsAndBytesConfig (the GPU 4/8-bit path), imported only when asked for.
    if name == "BitsAndBytesConfig":
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig
    raise AttributeError(f"module 'neural_chat_app' has no attribute {name!r}")
