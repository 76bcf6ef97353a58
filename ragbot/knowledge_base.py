"""``from ragbot.knowledge_base import KnowledgeBase`` as documented; it lives in
``ragbot.knowledge.knowledge_base``."""

from ragbot.knowledge.knowledge_base import Hit, IngestReport, KnowledgeBase, SearchResult

__all__ = ["Hit", "IngestReport", "KnowledgeBase", "SearchResult"]
