"""Citation markers that point at no passage are removed from an answer, also while it streams.

A grounded answer cites its passages as [1], [2], ...; a small model also writes "[2]" into a
general answer that was shown no passages, or "[4]" when it was shown three. Such a marker
(``[n]``, ``［n］``, ``【n】``, ``[1, 3]``; runs like ``[1][4]``) loses the numbers that name no
passage, and goes with the space before it when none is left. Brackets after a letter, digit or
closing bracket (``a[1]``, ``f(x)[0]``) and anything in code (backticks) are left alone: that is
indexing, not a citation.

``CitationFilter`` does the same on streamed text: it holds back a tail that could still become
a marker (a trailing "[", "[1", spaces, a backtick) until the next piece shows what it is, so the
streamed pieces add up to exactly the cleaned text.
"""

from __future__ import annotations

import re

_OPEN, _CLOSE = r"\[［【", r"\]］】"
_NUMBERS = r"\d+(?:\s*[,，、]\s*\d+)*"
_MARKER = rf"[{_OPEN}]\s*{_NUMBERS}\s*[{_CLOSE}]"
_RUN = re.compile(rf"(?P<space>[ \t]*)(?<![A-Za-z0-9_)\]])(?P<run>(?:{_MARKER})+)")
_ONE = re.compile(rf"([{_OPEN}])\s*({_NUMBERS})\s*([{_CLOSE}])")
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*(?:`|(?=\n)|\Z)", re.DOTALL)
# a tail that may still grow into a marker or a code fence: wait for the next piece
_OPEN_TAIL = re.compile(rf"[ \t]*(?:{_MARKER})*(?:[{_OPEN}][\d\s,，、]*)?$|`{{1,2}}$")


def strip_citations(text: str, passages: int) -> str:
    """``text`` without citation markers of passages it does not have (1..``passages``)."""
    out, end = [], 0
    for code in _CODE.finditer(text):
        out += [_strip_prose(text[end : code.start()], passages), code.group()]
        end = code.end()
    return "".join([*out, _strip_prose(text[end:], passages)])


def _strip_prose(text: str, passages: int) -> str:
    def run(match: re.Match) -> str:
        kept = "".join(_keep(m, passages) for m in _ONE.finditer(match["run"]))
        return match["space"] + kept if kept else ""

    return _RUN.sub(run, text)


def _keep(marker: re.Match, passages: int) -> str:
    numbers = re.findall(r"\d+", marker[2])
    valid = [n for n in numbers if 1 <= int(n) <= passages]
    if len(valid) == len(numbers):
        return marker[0]
    return f"{marker[1]}{', '.join(valid)}{marker[3]}" if valid else ""


class CitationFilter:
    """Streams ``strip_citations`` of the text fed so far: ``feed`` returns what can be shown now,
    ``close`` the rest; ``text`` is all of it, cleaned."""

    def __init__(self, passages: int):
        self.passages = passages
        self._raw = ""
        self._shown = 0  # characters of the cleaned text already returned

    def feed(self, piece: str) -> str:
        self._raw += piece
        tail = _OPEN_TAIL.search(self._raw)
        settled = self._raw[: tail.start()] if tail else self._raw
        return self._emit(strip_citations(settled, self.passages))

    def close(self) -> str:
        return self._emit(self.text)

    @property
    def text(self) -> str:
        return strip_citations(self._raw, self.passages)

    def _emit(self, cleaned: str) -> str:
        new = cleaned[self._shown :]
        self._shown = max(self._shown, len(cleaned))
        return new
