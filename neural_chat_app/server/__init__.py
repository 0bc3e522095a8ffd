"""The HTTP server: OpenAI-compatible API, web chat page, conversation log, metrics. Imports FastAPI."""

from neural_chat_app.server.app import create_app
from neural_chat_app.server.settings import ServerSettings, load_settings

__all__ = ["ServerSettings", "create_app", "load_settings"]
