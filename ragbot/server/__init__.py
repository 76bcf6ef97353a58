"""``ragbot serve``: the bot behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

``app`` builds the application over a ``RagBot``; ``completions`` turns chat requests into turns and
turns into OpenAI responses and stream chunks; ``turns`` runs a turn on a thread of its own;
``keys``, ``limits`` and ``errors`` are the access rules, the limits and the OpenAI error shape.
"""
