"""The ``ragbot`` command and the terminal chat: thin shells over the Python API."""
