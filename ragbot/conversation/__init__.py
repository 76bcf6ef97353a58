"""The conversation engine: a turn as named steps (memory, rewrite, retrieval, route, generate) over the
knowledge base and the models; history (saved in ``ragbot.storage``), prompts, and the LangChain Runnable.
"""
