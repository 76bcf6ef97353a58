"""LangChain interop: the bot as a Runnable, the knowledge base as a retriever.

chain = bot.as_runnable()            # {"question": ..., "history": [...]} -> Answer dict
chain.invoke({"question": "尼罗河是什么?"})
for piece in chain.stream({"question": "它流经哪些国家?", "history": [...]}): ...

retriever = as_retriever(bot.kb)     # a BaseRetriever returning langchain Documents
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableGenerator, RunnableLambda

from ragbot.knowledge.knowledge_base import KnowledgeBase


def _parse_input(value: Any) -> tuple[str, list]:
    if isinstance(value, str):
        return value, []
    if isinstance(value, dict) and "question" in value:
        return value["question"], list(value.get("history") or [])
    raise TypeError('ragbot runnable input must be a question string or {"question": ..., "history": [...]}')


def bot_runnable(answer: Callable[..., Any], stream_answer: Callable[..., Iterator[Any]]):
    """A Runnable over a bot's ``answer`` and ``stream_answer`` (``RagBot.as_runnable``): ``invoke``
    returns the answer record (``Answer.to_dict()``); ``stream`` yields text pieces as they are
    generated."""

    def invoke(value: Any) -> dict[str, Any]:
        question, history = _parse_input(value)
        return answer(question, history).to_dict()

    def stream(inputs: Iterator[Any]) -> Iterator[str]:
        for value in inputs:
            question, history = _parse_input(value)
            for item in stream_answer(question, history):
                if isinstance(item, str):  # the text pieces; the final Answer is not text
                    yield item

    return _StreamingLambda(invoke, stream)


class _StreamingLambda(RunnableLambda):
    """RunnableLambda whose ``stream`` yields text deltas instead of one final dict."""

    def __init__(self, invoke, stream):
        super().__init__(invoke, name="ragbot")
        self._streamer = RunnableGenerator(stream, name="ragbot-stream")

    def stream(self, input: Any, config=None, **kwargs: Any) -> Iterator[str]:  # noqa: A002
        yield from self._streamer.stream(input, config, **kwargs)


class KnowledgeBaseRetriever(BaseRetriever):
    """LangChain retriever over a ragbot knowledge base; ``only_confident`` drops hits
    below the threshold. Scores and the threshold decision are in each document's metadata."""

    kb: Any
    k: int = 5
    only_confident: bool = False

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        hits = self.kb.retrieve(query, self.k)
        return [
            LCDocument(
                page_content=h.text,
                id=h.id,
                metadata={
                    "source": h.source,
                    "title": h.title,
                    "doc_id": h.doc_id,
                    "score": h.score,
                    "above_threshold": h.above_threshold,
                },
            )
            for h in hits
            if h.above_threshold or not self.only_confident
        ]


def as_retriever(kb: KnowledgeBase, k: int = 5, only_confident: bool = False) -> KnowledgeBaseRetriever:
    return KnowledgeBaseRetriever(kb=kb, k=k, only_confident=only_confident)
