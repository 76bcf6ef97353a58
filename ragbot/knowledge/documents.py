"""Read knowledge files into ``Document``s, one parser per file type.

Every parser returns Markdown-flavoured text: headings as ``#`` lines, paragraphs
separated by blank lines, so one chunker (``ragbot.knowledge.chunking``) handles all formats.
A file that cannot be read raises ``DocumentError`` with the reason and what to do.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragbot.errors import DocumentError, IngestError


@dataclass(frozen=True)
class Document:
    """One document: its text, where it came from, and what the input said about it."""

    text: str
    source: str
    title: str
    doc_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _decode_text(path: Path) -> str:
    data = path.read_bytes()
    if not data.strip():
        raise DocumentError(path, "the file is empty; add text to it or remove it")
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DocumentError(path, "looks like a binary file, not text; check its type or extension")
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            return data.decode(codec)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            path,
            f"is not UTF-8 text (bad byte at offset {exc.start}); convert it, "
            f"e.g. `iconv -f GBK -t UTF-8 in.txt > out.txt`",
        ) from None


_H1 = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)


def read_markdown(path: Path) -> list[Document]:
    text = _decode_text(path)
    match = _H1.search(text)
    title = match.group(1) if match else path.stem
    return [Document(text=text, source=str(path), title=title)]


def read_text(path: Path) -> list[Document]:
    return [Document(text=_decode_text(path), source=str(path), title=path.stem)]


def read_jsonl(path: Path) -> list[Document]:
    """One document per line: ``text`` required; ``id``, ``title`` optional; the rest is metadata."""
    docs = []
    for lineno, line in enumerate(_decode_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DocumentError(path, f"line {lineno} is not valid JSON ({exc.msg}); fix that line") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DocumentError(path, f"line {lineno} has no string field 'text'; each line needs one")
        if not row["text"].strip():
            continue
        doc_id = row.get("id")
        title = row.get("title")
        meta = {k: v for k, v in row.items() if k not in ("text", "id", "title")}
        docs.append(
            Document(
                text=row["text"],
                source=str(path),
                title=str(title) if title else (str(doc_id) if doc_id is not None else path.stem),
                doc_id=str(doc_id) if doc_id is not None else None,
                metadata=meta,
            )
        )
    if not docs:
        raise DocumentError(path, "has no lines with text; each line needs a 'text' field")
    return docs


_TEXT_COLUMNS = ("text", "content", "body", "passage", "answer")


def read_csv(path: Path) -> list[Document]:
    """One document per row: the ``text``/``content`` column, or all columns as ``name: value``."""
    text = _decode_text(path)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    if not reader.fieldnames:
        raise DocumentError(path, "has no header row; the first row must name the columns")
    columns = [c.strip().lower() if c else "" for c in reader.fieldnames]
    text_col = next((reader.fieldnames[columns.index(c)] for c in _TEXT_COLUMNS if c in columns), None)
    id_col = reader.fieldnames[columns.index("id")] if "id" in columns else None
    title_col = reader.fieldnames[columns.index("title")] if "title" in columns else None
    docs = []
    for rowno, row in enumerate(reader, start=2):
        if None in row:
            raise DocumentError(path, f"row {rowno} has more cells than the header; fix that row")
        if text_col:
            body = (row.get(text_col) or "").strip()
        else:
            body = "\n".join(f"{k}: {v}" for k, v in row.items() if k not in (id_col, title_col) and v)
        if not body:
            continue
        doc_id = (row.get(id_col) or "").strip() if id_col else ""
        title = (row.get(title_col) or "").strip() if title_col else ""
        meta = {k: v for k, v in row.items() if k not in (text_col, id_col, title_col)} if text_col else {}
        docs.append(
            Document(
                text=body,
                source=str(path),
                title=title or doc_id or f"{path.stem} row {rowno}",
                doc_id=doc_id or None,
                metadata=meta,
            )
        )
    if not docs:
        raise DocumentError(path, "has no rows with text")
    return docs


def read_html(path: Path) -> list[Document]:
    """Visible text of the page with headings kept as ``#`` lines; scripts and navigation dropped."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode_text(path), "html.parser")
    for tag in soup(["script", "style", "noscript", "nav", "header", "footer", "template"]):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    blocks = []
    body = soup.body or soup
    for el in body.find_all(["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "blockquote", "td"]):
        if el.find_parent(["p", "li", "pre", "blockquote", "td"]) is not None:
            continue  # its text is already in the enclosing block
        text = el.get_text(" ", strip=True)
        if not text:
            continue
        if el.name[0] == "h" and el.name[1:].isdigit():
            blocks.append("#" * int(el.name[1]) + " " + text)
            title = title or text
        else:
            blocks.append(text)
    if not blocks:
        raise DocumentError(path, "has no visible text")
    return [Document(text="\n\n".join(blocks), source=str(path), title=title or path.stem)]


@contextmanager
def _pypdf_quiet() -> Iterator[None]:
    """pypdf logs and warns about every oddity of a damaged PDF; ragbot's one line says it all."""
    logger = logging.getLogger("pypdf")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def read_pdf(path: Path) -> list[Document]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    if path.stat().st_size == 0:
        raise DocumentError(path, "the file is empty; add text to it or remove it")
    try:
        with _pypdf_quiet():
            reader = PdfReader(str(path), strict=False)
            pages = [(page.extract_text() or "").strip() for page in reader.pages]
            meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, AttributeError) as exc:
        raise DocumentError(
            path, f"is not a readable PDF (truncated or damaged: {exc}); re-export or re-download it"
        ) from None
    text = "\n\n".join(p for p in pages if p)
    if not text:
        raise DocumentError(path, "has no extractable text (scanned images?); run OCR on it first")
    return [
        Document(text=text, source=str(path), title=meta_title.strip() or path.stem, metadata={"pages": len(pages)})
    ]


def read_docx(path: Path) -> list[Document]:
    """Paragraphs and tables in order; Word heading styles become ``#`` headings."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError, OSError) as exc:
        raise DocumentError(path, f"is not a readable .docx file ({exc}); re-save it from Word") from None
    except Exception as exc:  # zipfile.BadZipFile and lxml errors for damaged files
        raise DocumentError(path, f"is not a readable .docx file ({exc}); re-save it from Word") from None
    blocks, title = [], document.core_properties.title or ""
    for para in document.paragraphs:
        text = para.text.strip()
        if not text:
            continue
        style = (para.style.name if para.style is not None else "") or ""
        level = 1 if style == "Title" else int(style[8:]) if style.startswith("Heading ") and style[8:].isdigit() else 0
        if level:
            blocks.append("#" * level + " " + text)
            title = title or text
        else:
            blocks.append(text)
    for table in document.tables:
        for row in table.rows:
            cells = [c.text.strip() for c in row.cells]
            if any(cells):
                blocks.append(" | ".join(cells))
    if not blocks:
        raise DocumentError(path, "has no text")
    return [Document(text="\n\n".join(blocks), source=str(path), title=title or path.stem)]


READERS: dict[str, Callable[[Path], list[Document]]] = {
    ".md": read_markdown,
    ".markdown": read_markdown,
    ".txt": read_text,
    ".jsonl": read_jsonl,
    ".csv": read_csv,
    ".html": read_html,
    ".htm": read_html,
    ".pdf": read_pdf,
    ".docx": read_docx,
}


def read_documents(path: Path) -> list[Document]:
    """All documents in one file; raises ``DocumentError`` if it cannot be read."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DocumentError(path, f"unsupported file type {path.suffix or '(none)'!r}; supported: {', '.join(READERS)}")
    try:
        return reader(path)
    except DocumentError:
        raise
    except OSError as exc:
        raise DocumentError(path, f"cannot be read ({exc.strerror or exc})") from None


def find_files(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """Expand files and folders into (supported files, unsupported files found in folders).

    Hidden files and folders are skipped. A missing path, or an explicitly named file of an
    unsupported type, raises ``IngestError``.
    """
    if not paths:
        raise IngestError("no paths given; name the files or folders to ingest")
    found: list[Path] = []
    skipped: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not str(raw).strip() or not path.exists():
            raise IngestError(f"{raw!r} does not exist; check the path")
        if path.is_file():
            if path.suffix.lower() not in READERS:
                raise IngestError(
                    f"{path}: unsupported file type {path.suffix or '(none)'!r}; supported: {', '.join(READERS)}"
                )
            found.append(path.resolve())
            continue
        for child in sorted(path.rglob("*")):
            rel = child.relative_to(path)
            if any(part.startswith(".") for part in rel.parts) or not child.is_file():
                continue
            (found if child.suffix.lower() in READERS else skipped).append(child.resolve())
    if not found:  # only folders were named, and they hold nothing to read
        folders = ", ".join(str(Path(raw).expanduser()) for raw in paths)
        others = f" ({len(skipped)} file(s) of other types)" if skipped else ""
        raise IngestError(
            f"no supported files in {folders}{others}; add files of a supported type: {', '.join(READERS)}"
        )
    unique = list(dict.fromkeys(found))
    return unique, skipped


def iter_documents(files: list[Path]) -> Iterator[tuple[Path, list[Document] | DocumentError]]:
    """For each file, its documents or the error that stopped it (so one bad file is skipped)."""
    for path in files:
        try:
            yield path, read_documents(path)
        except DocumentError as exc:
            yield path, exc
