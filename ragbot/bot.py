"""``from ragbot.bot import RagBot`` as documented; the engine lives in ``ragbot.conversation.bot``."""

from ragbot.conversation.bot import Answer, Conversation, RagBot, Route, Turn

__all__ = ["Answer", "Conversation", "RagBot", "Route", "Turn"]
