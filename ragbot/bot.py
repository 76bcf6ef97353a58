"""``from ragbot.bot import RagBot`` as documented; the engine lives in ``ragbot.conversation.bot``."""

from ragbot.conversation.bot import RagBot
from ragbot.conversation.session import Conversation
from ragbot.conversation.turn import Answer, Route, Turn

__all__ = ["Answer", "Conversation", "RagBot", "Route", "Turn"]
