"""The HTTP server: OpenAI-compatible API, web chat page, conversation log, metrics.

`create_app` imports FastAPI on first use, so reading the settings (the `serve` flags) does not.
"""

from neural_chat_app.server.settings import ServerSettings, load_settings

__all__ = ["ServerSettings", "create_app", "load_settings"]


def __getattr__(name: str):
    if name == "create_app":
        from neural_chat_app.server.app import create_app

        return create_app
    raise AttributeError(f"module 'neural_chat_app.server' has no attribute {name!r}")
