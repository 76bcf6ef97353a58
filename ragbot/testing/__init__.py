"""Test doubles that ship with ragbot, for its tests and yours: a deterministic embedder, scripted chat
models, a local fake of the OpenAI fine-tuning API, and a throwaway PostgreSQL server.
"""
