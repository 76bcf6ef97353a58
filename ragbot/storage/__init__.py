"""What ragbot keeps between runs, apart from the index: saved conversations (``conversations``: a
SQLite file, ``sqlite``, or PostgreSQL, ``postgres``; their SQL written once in ``conversation_sql``)
and the fine-tuning job records (``jobs``). Needs only the core and ``Message``, so every layer above
can save and read without importing the turn logic.
"""
