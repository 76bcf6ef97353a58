"""What a conversation is about: the entities it names and the documents its answers used.

A follow-up like "那它是哪年发行的？" names nothing; the rewrite model often leaves it as it is.
The conversation still knows what "它" probably is: the entity named last, and the documents the
previous turns were grounded in. ``Topic`` keeps both, most recent first; ``update_topic`` is a
pure function that folds one finished turn into it, so the same state comes out whether it is
updated turn by turn (a live chat), rebuilt from saved turns (an older conversations file) or
from the history text alone (a stateless caller).

Entities are found in text without a model: 《》 titles, the titles of the knowledge base's
documents (and their short forms: "尼罗河" for "尼罗河：非洲的生命之河", "Nile" for "The Nile"),
and capitalised English names ("Yangtze", "LoRA").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ragbot.models.chat import Message
from ragbot.text import is_chinese

MAX_ENTITIES = 8
MAX_DOCUMENTS = 5
TOPIC_DOCUMENTS = 2  # the topic's most recent documents whose chunks a follow-up also ranks
MIN_TITLE_CHARS = 2  # shorter titles ("AI", "书") match inside too many unrelated words

_BOOK_TITLE = re.compile(r"《([^《》\n]{1,40})》")
_CAPITALISED = re.compile(r"\b[A-Z][A-Za-z0-9'’-]*[A-Za-z0-9](?:[ -][A-Z][A-Za-z0-9'’-]*[A-Za-z0-9])*")
# capitalised words that are not names: sentence openers, question words, pronouns
_NOT_NAMES = set(
    "A An And Are As At But By Can Could Did Do Does For From Had Has Have He Her Here His How I If In Is It Its "
    "Me My No Not Of Oh Ok Okay On Or Our Please She So Sure Tell Thanks Thank That The Their Then There These "
    "They This Those To Was We Were What When Where Which Who Whom Whose Why Will With Would Yes You Your Also "
    "Hi Hello Hey Well Now Just Let Maybe Not Only Any Some Many Much More Most Other Another Both Each Every "
    "Answer Question Sources Source Not Found".split()
)
_TITLE_SPLIT = re.compile(r"\s*[：:—–|（(]\s*")


@dataclass(frozen=True)
class TopicDocument:
    """A knowledge-base document a turn was grounded in: its key (``doc_id``, or the source file
    for documents without an id) and its title."""

    doc_id: str
    title: str


@dataclass(frozen=True)
class Topic:
    """The entities and documents of a conversation, most recent first."""

    entities: tuple[str, ...] = ()
    documents: tuple[TopicDocument, ...] = ()

    @property
    def current(self) -> str | None:
        """The entity a follow-up that names none is most likely about."""
        return self.entities[0] if self.entities else None

    def __bool__(self) -> bool:
        return bool(self.entities or self.documents)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entities": list(self.entities),
            "documents": [{"doc_id": d.doc_id, "title": d.title} for d in self.documents],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Topic:
        """A topic from ``to_dict`` output; anything malformed is dropped, not raised (it is a cache)."""
        if not isinstance(data, Mapping):
            return cls()
        entities = tuple(str(e) for e in data.get("entities", ()) if isinstance(e, str) and e)
        documents = tuple(
            TopicDocument(str(d["doc_id"]), str(d.get("title", "")))
            for d in data.get("documents", ())
            if isinstance(d, Mapping) and d.get("doc_id")
        )
        return cls(entities[:MAX_ENTITIES], documents[:MAX_DOCUMENTS])

    def describe(self) -> str:
        """One line for ``/why``."""
        if not self:
            return "(none yet)"
        entities = ", ".join(self.entities) or "-"
        docs = ", ".join(d.title or d.doc_id for d in self.documents) or "-"
        return f"{entities}; documents: {docs}"


def title_names(title: str) -> list[str]:
    """The names a document title is typed as: the title, the part before a colon or dash, and
    an English title without its leading "The"."""
    title = title.strip()
    names = [title]
    head = _TITLE_SPLIT.split(title, maxsplit=1)[0].strip()
    names.append(head)
    for name in (title, head):
        if name.lower().startswith("the "):
            names.append(name[4:].strip())
    return [n for n in dict.fromkeys(names) if len(n) >= MIN_TITLE_CHARS]


def short_name(title: str) -> str:
    """How a title is usually said: "尼罗河" for "尼罗河：非洲的生命之河", "Nile" for "The Nile"."""
    return min(title_names(title) or [title.strip()], key=len)


def title_index(documents: Iterable[TopicDocument]) -> dict[str, TopicDocument]:
    """Every name of every document title -> the document (the first one, when titles collide)."""
    index: dict[str, TopicDocument] = {}
    for doc in documents:
        for name in title_names(doc.title):
            index.setdefault(name, doc)
    return index


def has_name(text: str, name: str) -> int:
    """Where ``name`` occurs in ``text`` as a name (whole words for Latin script), or -1."""
    if name.isascii():
        if name.lower() not in text.lower():
            return -1
        match = re.search(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", text, re.IGNORECASE)
        return match.start() if match else -1
    return text.find(name)


def entity_names(text: str, titles: Mapping[str, TopicDocument] | None = None) -> list[str]:
    """The entities ``text`` names, in order of first appearance: 《》 titles, known document
    titles (``titles`` from ``title_index``), and capitalised English names."""
    found: list[tuple[int, str]] = [(m.start(1), m.group(1).strip()) for m in _BOOK_TITLE.finditer(text)]
    for name in titles or {}:
        at = has_name(text, name)
        if at >= 0:
            found.append((at, name))
    for m in _CAPITALISED.finditer(text):
        words = m.group().split()
        while words and words[0] in _NOT_NAMES:
            words.pop(0)
        name, at = " ".join(words), m.end() - len(" ".join(words))
        # an English sentence's first word is capitalised anyway: "About 6,300 km." names nothing
        opens_sentence = not is_chinese(text) and (not text[:at].strip() or text[:at].rstrip()[-1] in ".!?:\n")
        if name and not (opens_sentence and len(words) == 1 and name[1:].islower()):
            found.append((at, name))
    names: list[str] = []
    for _, name in sorted(found, key=lambda item: (item[0], -len(item[1]))):
        name = name[4:] if name[:4].lower() == "the " else name  # "the Yangtze" is the Yangtze
        # a shorter name inside one already found ("尼罗河" in "尼罗河：非洲的生命之河") adds nothing
        if name and not any(name in kept for kept in names):
            names.append(name)
    return names


def _front(new: Sequence, old: Sequence, limit: int) -> tuple:
    return tuple(dict.fromkeys([*new, *old]))[:limit]


def update_topic(
    topic: Topic,
    question: str,
    answer: str = "",
    sources: Sequence[TopicDocument] = (),
    titles: Mapping[str, TopicDocument] | None = None,
) -> Topic:
    """The topic after one finished turn: the entities the question names come first (what the user
    asked about), then those of the answer, then the titles of the documents the answer used;
    the documents are those sources plus any known document the question names."""
    titles = {**title_index(topic.documents), **title_index(sources), **(titles or {})}
    asked = entity_names(question, titles)
    said = entity_names(answer, titles)
    used = [short_name(doc.title) for doc in sources[:1] if doc.title.strip()]
    # a document title found in the text is named by its title's short form only once
    entities = [e for e in dict.fromkeys([*asked, *said, *used]) if e]
    named_docs = [titles[e] for e in [*asked, *said] if e in titles]
    documents = [*dict.fromkeys([*named_docs[:1], *sources, *named_docs[1:]])]
    return Topic(_front(entities, topic.entities, MAX_ENTITIES), _front(documents, topic.documents, MAX_DOCUMENTS))


def topic_from_history(history: Sequence[Message], titles: Mapping[str, TopicDocument] | None = None) -> Topic:
    """The topic of a history given as text only (a stateless caller): the turns folded in order."""
    topic = Topic()
    for i in range(0, len(history) - 1, 2):
        topic = update_topic(topic, history[i].content, history[i + 1].content, titles=titles)
    return topic


def sources_from_meta(meta: Mapping[str, Any]) -> list[TopicDocument]:
    """The documents a saved turn's answer used (``turn_meta`` keeps its passages), best first."""
    docs = [
        TopicDocument(str(p.get("doc_id") or p.get("source") or ""), str(p.get("title", "")))
        for p in meta.get("passages", [])
        if isinstance(p, Mapping)
    ]
    return [d for d in dict.fromkeys(docs) if d.doc_id]


def topic_from_turns(
    turns: Iterable[tuple[str, str, Mapping[str, Any]]], titles: Mapping[str, TopicDocument] | None = None
) -> Topic:
    """The topic of saved turns ``(question, answer, meta)`` (a conversations file from before the
    state was saved): the same fold, with the documents each turn's meta records."""
    topic = Topic()
    for question, answer, meta in turns:
        topic = update_topic(topic, question, answer, sources_from_meta(meta or {}), titles)
    return topic


def topic_names(topic: Topic) -> list[str]:
    """What a follow-up searched with the topic is about: the current entity, or one of the topic's
    most recent documents (the one grounded last is often the film when the entity is its actor)."""
    names = [topic.current or "", *(short_name(d.title) for d in topic.documents[:TOPIC_DOCUMENTS] if d.title)]
    return [n for n in dict.fromkeys(names) if n]
