"""Split documents into chunks that respect Chinese and English sentence ends.

Sections (Markdown headings) are hard boundaries; inside a section, sentences are packed
up to ``chunk_tokens`` tiktoken tokens, and the next chunk repeats the last sentences of
the previous one up to ``chunk_overlap`` tokens. Sentences end after 。！？；!?; (with any
closing quotes or brackets) or after . ! ? followed by a space, so a chunk never starts
with 。. A sentence longer than a whole chunk is cut at commas, then at token boundaries.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from ragbot.knowledge.documents import Document
from ragbot.text import CJK_IDEOGRAPHS
from ragbot.tokens import count_tokens, encoding

_CLOSERS = "”’」』）)】》〉\"'"
# A sentence ends after CJK terminators (no space needed) or after . ! ? followed by a space.
_SENTENCE_END = re.compile(rf"(?:[。！？；!?;]+|……|…)[{_CLOSERS}]*|[.!?]+[{_CLOSERS}]*(?=\s)")
_CLAUSE_END = re.compile(rf"[，、：,:]+[{_CLOSERS}]*")
_LEADING_PUNCT = re.compile(rf"^[。！？；，、：.!?;,:…{_CLOSERS}]+")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_CJK = f"\u3000-\u303f{CJK_IDEOGRAPHS}\uff00-\uffef"  # with CJK punctuation and full-width forms
_CJK_END = re.compile(rf"[{_CJK}][{_CLOSERS}“‘]*$")
_CJK_START = re.compile(rf"^[“‘{_CLOSERS}]*[{_CJK}]")


@dataclass(frozen=True)
class Chunk:
    """A piece of a document, with enough context to cite it and a content-hash id."""

    id: str
    text: str
    source: str
    title: str
    position: int
    headings: tuple[str, ...] = ()
    doc_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def context(self) -> str:
        """Title and heading path, e.g. ``尼罗河 > 流经国家``: what the chunk is about."""
        parts = [self.title] + [h for h in self.headings if h != self.title]
        return " > ".join(p for p in parts if p)

    @property
    def embedding_text(self) -> str:
        """What gets embedded: the context line, then the chunk, so headings help retrieval."""
        return f"{self.context}\n{self.text}" if self.context else self.text


def split_sentences(text: str) -> list[str]:
    """Split one paragraph into sentences; the terminator stays with its sentence."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        piece = text[start : match.end()].strip()
        if piece:
            sentences.append(piece)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _sections(text: str) -> list[tuple[tuple[str, ...], list[str]]]:
    """(heading path, paragraphs) for each section of a Markdown-flavoured text."""
    sections: list[tuple[tuple[str, ...], list[str]]] = []
    stack: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    current: list[str] = []
    in_fence = False

    def end_paragraph() -> None:
        if current:
            paragraphs.append("\n".join(current))
            current.clear()

    def end_section() -> None:
        end_paragraph()
        if paragraphs:
            sections.append((tuple(h for _, h in stack), list(paragraphs)))
            paragraphs.clear()

    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else _HEADING.match(line)
        if heading:
            end_section()
            level = len(heading.group(1))
            stack = [(lvl, h) for lvl, h in stack if lvl < level] + [(level, heading.group(2))]
        elif not line.strip():
            end_paragraph()
        else:
            current.append(line.strip())
    end_section()
    return sections


@dataclass(frozen=True)
class _Unit:
    """A sentence (or piece of one) waiting to be packed into a chunk."""

    text: str
    tokens: int
    starts_paragraph: bool


def _join(units: list[_Unit]) -> str:
    """Sentences back into text: paragraphs on new lines, no spaces between Chinese sentences."""
    out = ""
    for unit in units:
        if not out:
            out = unit.text
        elif unit.starts_paragraph:
            out += "\n" + unit.text
        elif _CJK_END.search(out) or _CJK_START.search(unit.text):
            out += unit.text
        else:
            out += " " + unit.text
    return out


def _attach_leading_punct(pieces: list[str]) -> list[str]:
    """Move punctuation that would open a piece (``。`` etc.) onto the end of the previous one."""
    out: list[str] = []
    for piece in pieces:
        lead = _LEADING_PUNCT.match(piece)
        if out and lead:
            out[-1] += lead.group(0)
            piece = piece[lead.end() :].lstrip()
        if piece:
            out.append(piece)
    return out


def _split_by_tokens(text: str, limit: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` tokens, never inside a UTF-8 character."""
    enc = encoding()
    tokens = enc.encode(text, disallowed_special=())
    pieces, carry = [], b""
    for i in range(0, len(tokens), limit):
        data = carry + enc.decode_bytes(tokens[i : i + limit])
        try:
            piece, carry = data.decode("utf-8"), b""
        except UnicodeDecodeError as exc:
            piece, carry = data[: exc.start].decode("utf-8"), data[exc.start :]
        pieces.append(piece)
    if carry:
        pieces.append(carry.decode("utf-8", errors="replace"))
    return [p.strip() for p in pieces if p.strip()]


def _fit(sentence: str, limit: int) -> list[str]:
    """A sentence as pieces of at most ``limit`` tokens: whole, at clause ends, or cut."""
    if count_tokens(sentence) <= limit:
        return [sentence]
    clauses, start = [], 0
    for match in _CLAUSE_END.finditer(sentence):
        clauses.append(sentence[start : match.end()])
        start = match.end()
    clauses.append(sentence[start:])
    pieces: list[str] = []
    for clause in (c.strip() for c in clauses):
        if not clause:
            continue
        if count_tokens(clause) <= limit:
            if pieces and count_tokens(pieces[-1] + clause) <= limit:
                pieces[-1] += clause
            else:
                pieces.append(clause)
        else:
            pieces.extend(_split_by_tokens(clause, limit))
    return _attach_leading_punct(pieces)


def _pack(units: list[_Unit], chunk_tokens: int, overlap: int) -> list[str]:
    """Greedily pack units into chunks; each new chunk repeats whole trailing sentences of the
    previous one, up to ``overlap`` tokens."""
    chunks: list[str] = []
    current: list[_Unit] = []
    size = 0
    for unit in units:
        if current and size + unit.tokens > chunk_tokens:
            chunks.append(_join(current))
            tail: list[_Unit] = []
            for prev in reversed(current):
                tail_size = sum(u.tokens for u in tail) + prev.tokens
                if tail_size > overlap or tail_size + unit.tokens > chunk_tokens:
                    break
                tail.insert(0, prev)
            current = tail
            size = sum(u.tokens for u in tail)
        current.append(unit)
        size += unit.tokens
    if current:
        chunks.append(_join(current))
    return chunks


def chunk_document(doc: Document, chunk_tokens: int = 256, chunk_overlap: int = 48) -> list[Chunk]:
    """Chunks of one document, in order, each with a stable content-hash id."""
    chunks: list[Chunk] = []
    seen: dict[str, int] = {}
    key = doc.doc_id if doc.doc_id is not None else ""
    for headings, paragraphs in _sections(doc.text):
        units = [
            _Unit(piece, count_tokens(piece), starts_paragraph=s_index == 0 and p_index == 0)
            for paragraph in paragraphs
            for s_index, sentence in enumerate(split_sentences(paragraph))
            for p_index, piece in enumerate(_fit(sentence, chunk_tokens))
        ]
        for text in _pack(units, chunk_tokens, chunk_overlap):
            chunk = Chunk(
                id="",
                text=text,
                source=doc.source,
                title=doc.title,
                position=len(chunks),
                headings=headings,
                doc_id=doc.doc_id,
                metadata=doc.metadata,
            )
            digest = hashlib.sha256(f"{doc.source}\0{key}\0{chunk.embedding_text}".encode()).hexdigest()[:16]
            n = seen.get(digest, 0)
            seen[digest] = n + 1
            chunk_id = digest if n == 0 else f"{digest}-{n}"
            chunks.append(Chunk(**{**chunk.__dict__, "id": chunk_id}))
    return chunks
