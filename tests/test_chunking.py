import random

import pytest

from ragbot.knowledge.chunking import chunk_document, split_sentences
from ragbot.knowledge.documents import Document
from ragbot.tokens import count_tokens

ZH = (
    "尼罗河是非洲的一条河流。它全长约六千六百五十公里，是世界上最长的河流之一！"
    "它有两条主要支流：白尼罗河和青尼罗河；两者在喀土穆汇合。“尼罗河是埃及的母亲河。”"
    "你去过埃及吗？阿斯旺大坝建成于二十世纪六十年代……它改变了下游的洪水规律。"
)


def test_sentences_end_after_chinese_and_english_terminators():
    assert split_sentences("你好。今天好吗？很好！Yes. It is; ok") == [
        "你好。",
        "今天好吗？",
        "很好！",
        "Yes.",
        "It is;",
        "ok",
    ]


def test_closing_quote_stays_with_its_sentence():
    assert split_sentences("他说：“你好。”我走了。") == ["他说：“你好。”", "我走了。"]


@pytest.mark.parametrize("size", [16, 20, 24, 32, 48, 64, 128])
def test_no_chunk_starts_with_closing_punctuation_and_sizes_hold(size):
    rng = random.Random(size)
    sentences = split_sentences(ZH)
    text = "\n\n".join("".join(rng.choice(sentences) for _ in range(rng.randint(1, 8))) for _ in range(20))
    # a long sentence with no terminator until the very end forces cutting inside it
    text += "\n\n" + "很长的句子没有句号" * 40 + "。"
    chunks = chunk_document(Document(text=text, source="s.md", title="t"), size, size // 4)
    assert chunks
    for chunk in chunks:
        assert not chunk.text.startswith(("。", "！", "？", "；", "，", "”")), chunk.text
        assert count_tokens(chunk.text) <= size + 2, (count_tokens(chunk.text), chunk.text)
    # nothing is lost: every sentence of the input appears in some chunk
    joined = "".join(c.text for c in chunks)
    for sentence in sentences:
        assert sentence in joined


def test_overlap_repeats_the_previous_sentence():
    text = "".join(f"第{i}句话说的是一件事情。" for i in range(30))
    chunks = chunk_document(Document(text=text, source="s.md", title="t"), 40, 20)
    assert len(chunks) > 2
    for before, after in zip(chunks, chunks[1:], strict=False):
        last_sentence = split_sentences(before.text)[-1]
        assert after.text.startswith(last_sentence)


def test_headings_are_kept_as_context_and_sections_split():
    doc = Document(
        text="# 尼罗河\n\n## 流经国家\n\n乌干达、苏丹和埃及。\n\n## 水坝\n\n阿斯旺大坝。",
        source="nile.md",
        title="尼罗河",
    )
    chunks = chunk_document(doc)
    assert [c.text for c in chunks] == ["乌干达、苏丹和埃及。", "阿斯旺大坝。"]
    assert chunks[0].context == "尼罗河 > 流经国家"
    assert chunks[0].embedding_text.startswith("尼罗河 > 流经国家\n")
    assert [c.position for c in chunks] == [0, 1]


def test_hash_inside_code_fence_is_not_a_heading():
    doc = Document(text="# Guide\n\n```\n# not a heading\n```\n\nAfter the code.", source="g.md", title="Guide")
    assert all(c.headings == ("Guide",) for c in chunk_document(doc))


def test_ids_are_stable_and_depend_on_content():
    doc = Document(text=ZH, source="a.md", title="t")
    first = [c.id for c in chunk_document(doc, 32, 8)]
    assert first == [c.id for c in chunk_document(doc, 32, 8)]
    changed = [c.id for c in chunk_document(Document(text=ZH + "新增一句。", source="a.md", title="t"), 32, 8)]
    assert changed[:-1] == first[:-1] and changed[-1] != first[-1]
    assert len(set(first)) == len(first)


def test_english_sentences_are_joined_with_spaces():
    doc = Document(text="First sentence here. Second one follows. Third ends it.", source="e.md", title="e")
    assert chunk_document(doc)[0].text == "First sentence here. Second one follows. Third ends it."
