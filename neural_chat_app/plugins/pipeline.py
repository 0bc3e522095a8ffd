"""What a chatbot does with its plugins around one generation: check the query, add retrieved context, filter
the reply. Shared by `ChatBot` and the HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field


@dataclass
class Prepared:
    messages: list[dict]  # what the model sees (the last user turn may carry retrieved context)
    links: list[dict] = field(default_factory=list)  # the retrieved sources: source, location, score, text
    refusal: str | None = None  # set when the query is refused: reply with it instead of generating


class PluginPipeline:
    def __init__(self, retriever=None, safety=None):
        self.retriever, self.safety = retriever, safety

    @classmethod
    def build(cls, enabled: Mapping[str, object]) -> PluginPipeline:
        retriever = safety = None
        if "retrieval" in enabled:
            from neural_chat_app.plugins.retrieval import Retriever

            retriever = Retriever(enabled["retrieval"])
        if "safety_checker" in enabled:
            from neural_chat_app.plugins.safety import SafetyChecker

            safety = SafetyChecker(enabled["safety_checker"])
        return cls(retriever, safety)

    def prepare(self, messages: list[dict]) -> Prepared:
        last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None)
        if last is None:
            return Prepared(messages)
        query = messages[last]["content"]
        if self.safety is not None:
            refusal = self.safety.check_query(query)
            if refusal is not None:
                return Prepared(messages, [], refusal)
        if self.retriever is None:
            return Prepared(messages)
        hits = self.retriever.search(query)
        if not hits:
            return Prepared(messages)
        augmented = [
            *messages[:last],
            {**messages[last], "content": self.retriever.prompt(query, hits)},
            *messages[last + 1 :],
        ]
        return Prepared(augmented, [h.as_link() for h in hits])

    def filter_reply(self, chunks: Iterator[str]) -> Iterator[str]:
        return self.safety.filter_reply(chunks) if self.safety is not None else chunks

    def afilter_reply(self, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        return self.safety.afilter_reply(chunks) if self.safety is not None else chunks

    def close(self) -> None:
        if self.retriever is not None:
            self.retriever.close()
