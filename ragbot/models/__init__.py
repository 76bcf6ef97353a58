"""Models: chat models (OpenAI-compatible endpoints, local GGUF models run by llama.cpp) and embedders.

Each backend registers itself by name in ``ragbot.registry``; nothing here imports a backend it does not own.
"""
