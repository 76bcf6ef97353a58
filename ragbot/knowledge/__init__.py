"""The knowledge base: files read into documents, chunked, embedded and kept in a FAISS index on disk;
``KnowledgeBase`` ingests incrementally and searches with the confidence threshold.
"""
