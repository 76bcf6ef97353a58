"""Test doubles that ship with ragbot, for its tests and yours: a deterministic embedder, scripted chat
models, and a local fake of the OpenAI fine-tuning API.
"""
