"""Errors meant for people: each message says what is wrong and what to do next.

The CLI prints ``str(error)`` on one line and exits non-zero; Python callers can catch
the specific type (or ``RagbotError`` for all of them).
"""


class RagbotError(Exception):
    """Base class of every error ragbot raises on purpose."""


class ConfigError(RagbotError, ValueError):
    """A setting has an unknown name or a bad value."""


class IngestError(RagbotError):
    """Nothing could be ingested (missing path, no supported files, every file bad)."""


class DocumentError(RagbotError):
    """One input file cannot be read: unsupported, corrupt, empty or not UTF-8."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class IndexNotFoundError(RagbotError, FileNotFoundError):
    """No index exists at the given directory."""


class IndexCorruptError(RagbotError):
    """The index directory exists but its files are missing or damaged."""


class EmbedderMismatchError(RagbotError):
    """The index was built with another embedder than the configured one."""


class IndexLockedError(RagbotError):
    """Another process is writing the same index."""


class IndexAccessError(RagbotError):
    """The index directory cannot be created, read or written (a file in the way, no permission)."""


class VectorStoreError(RagbotError):
    """The configured vector store cannot be reached or opened (a Milvus URI that does not answer)."""


class EmbedderError(RagbotError):
    """The embedder cannot be loaded or did not answer (missing package, endpoint down)."""


class QueryError(RagbotError, ValueError):
    """The query is empty or unusable."""


class ModelError(RagbotError):
    """A chat model could not answer: unreachable, bad key, unknown model, cut stream."""


class PromptError(RagbotError):
    """A prompt template is missing, or its variables do not match what the code provides."""


class ConversationError(RagbotError, ValueError):
    """A question or history that cannot be used (empty question, roles out of order)."""


class ConversationStoreError(RagbotError):
    """The conversations file cannot be used: damaged, read-only, or written by a newer ragbot."""


class StoreUnavailableError(ConversationStoreError):
    """The conversation database went away while ragbot ran: the turn was not saved; it works again,
    without a restart, once the database is back (a server answers 503 meanwhile)."""


class StoreUnreachableError(StoreUnavailableError):
    """The conversation database named by ``sessions`` cannot be reached when it is opened."""


class ConversationChangedError(RagbotError):
    """A turn was not saved because its conversation gained a turn while the answer was generated
    (another process answered a message of the same conversation first): send the message again."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name  # the conversation, as the store names it


class TurnAnsweredError(ConversationChangedError):
    """A turn was not saved because another request with the same idempotency key (the same turn id)
    saved its answer while this one was generated: send the request again to get the saved answer."""


class FinetuneError(RagbotError):
    """Fine-tuning could not go on: unknown job or model, a job that failed on the server."""


class TrainingFileError(FinetuneError, ValueError):
    """A training file that cannot be used (broken JSON on a line, wrong roles, empty file)."""


class CalibrationError(RagbotError, ValueError):
    """The labelled set cannot calibrate a threshold (one class missing, bad objective)."""


class QuestionFileError(RagbotError, ValueError):
    """A question file that cannot be read: missing, not UTF-8, or with a malformed line."""


class EvaluationError(RagbotError):
    """An evaluation that cannot run as asked (options that conflict, an output folder of
    another run)."""
