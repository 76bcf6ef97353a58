"""Fact recall: does an answer contain the gold facts (the values a good answer states)?

A gold fact is a short value such as a date, a name or a number ("2001年12月28日", "杰茜·尼尔森",
"132分钟"). An answer contains it when the fact's ``fact_key`` is a substring of the answer's:
case, full/half-width forms, spaces, punctuation and symbols are ignored (so 《七里香》 matches
七里香), and numbers are compared as numbers with a date unit after them ignored (2003年 matches
2003, 01月 matches 1月, 125,000,000 matches 125000000) but never inside a longer number (12 does
not match 2012).

Where a question set gives knowledge triples (subject, relation, value) instead of facts, the
facts of a row are the values, each item of a list value on its own ("《无耻混蛋》、《低俗小说》"),
that its good answer states (``facts_in_answer``): what the answer was built from, as far as it shows.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

from ragbot.text import CJK_IDEOGRAPHS

_NUM = "\ue000"  # marks both ends of a number (private-use characters: kept, never in real text)
_POINT = "\ue001"  # a decimal point, kept when punctuation is dropped
_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
_DATE_UNIT = re.compile(r"(\d)\s*[年月日号]")
# list separators in triple values: 、 / ; | and commas that are not thousands separators,
# spaces next to Chinese, and the boundary between two 《》 titles
_ITEM_SEPARATOR = re.compile(
    rf"[、/／;；|，]|(?<!\d),|,(?!\d)|(?<=[{CJK_IDEOGRAPHS}》])\s+|\s+(?=[{CJK_IDEOGRAPHS}《])|(?<=》)(?=《)"
)
_DATE = re.compile(r"(\d{4})\s*年\s*(?:(\d{1,2})\s*月\s*(?:\d{1,2}\s*[日号])?)?")
_BRACKETED = re.compile(r"[（(][^（）()]*[)）]")
LONG_VALUE = 60  # characters: a value this long is a description, never split into items
MIN_KEY = 2  # a fact shorter than this (after normalising) is too weak to count ("男", "8")


def _number(match: re.Match) -> str:
    whole, _, decimals = match.group().replace(",", "").partition(".")
    decimals = decimals.rstrip("0")
    return _NUM + (whole.lstrip("0") or "0") + (_POINT + decimals if decimals else "") + _NUM


def fact_key(text: str) -> str:
    """``text`` as fact recall compares it (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _DATE_UNIT.sub(r"\1 ", text)
    text = _NUMBER.sub(_number, text)
    kept = (ch for ch in text if ch in (_NUM, _POINT) or not _dropped(ch))
    return "".join(kept).replace(_NUM * 2, _NUM)


def _dropped(ch: str) -> bool:
    return unicodedata.category(ch).startswith(("P", "Z", "S")) or ch.isspace()


def contains_fact(answer: str, fact: str) -> bool:
    """Whether ``answer`` states ``fact`` (after ``fact_key``; an empty fact is never stated)."""
    key = fact_key(fact)
    return bool(key) and key in fact_key(answer)


def fact_recall(answer: str, facts: Sequence[str]) -> tuple[float, list[str]]:
    """(the share of ``facts`` that ``answer`` states, the facts it states); NaN without facts."""
    if not facts:
        return float("nan"), []
    found = [f for f in facts if contains_fact(answer, f)]
    return len(found) / len(facts), found


def value_items(value: str) -> list[str]:
    """A triple's value as the items it lists ("法语 / 英语 / 德语" -> 法语, 英语, 德语); a long
    description stays whole. Bracketed asides and a closing 等 ("and others") are dropped."""
    value = value.strip()
    if len(value) >= LONG_VALUE:
        return [value]
    items = []
    for part in _ITEM_SEPARATOR.split(_BRACKETED.sub("", value)):
        part = part.strip().strip("《》 ").removesuffix("等").strip("《》 ")
        if part:
            items.append(part)
    return items or [value]


def _date_prefixes(value: str) -> list[str]:
    """A date's year and month, then its year ("2009年07月13日" -> 2009年07月, 2009年): an answer
    that says "2009年拍摄的" states part of the date. Nothing for a value that is not a date."""
    match = _DATE.fullmatch(value)
    if not match:
        return []
    year, month = match.groups()
    return [f"{year}年{month}月", f"{year}年"] if month else [f"{year}年"]


def facts_in_answer(triples: Iterable[Sequence[str]], answer: str) -> list[str]:
    """The values of ``triples`` (or their items, or the year of a date) that ``answer`` states:
    the gold facts of a turn whose data gives the triples its good answer was built from."""
    facts: list[str] = []
    seen: set[str] = set()
    for triple in triples:
        value = str(triple[2]).strip()
        # each item on its own, even when the good answer states the whole list: an answer naming
        # two of three places ("新西兰,惠灵顿,帕拉帕拉姆") states two facts, not none
        parts = [
            next((p for p in (item, *_date_prefixes(item)) if contains_fact(answer, p)), "")
            for item in value_items(value)
        ]
        for part in parts:
            key = fact_key(part)
            if len(key.replace(_NUM, "")) >= MIN_KEY and key not in seen:
                seen.add(key)
                facts.append(part)
    return facts
