import pytest

from ragbot.errors import DocumentError, IngestError
from ragbot.knowledge.documents import find_files, read_documents


def test_each_file_type_is_read_with_title_and_text(corpus):
    (md,) = read_documents(corpus["md"])
    assert md.title == "尼罗河" and "乌干达" in md.text
    (txt,) = read_documents(corpus["txt"])
    assert txt.title == "tea" and "Green tea" in txt.text
    films = read_documents(corpus["jsonl"])
    assert [(d.doc_id, d.title) for d in films] == [("film-1", "卧虎藏龙"), ("film-2", "霸王别姬")]
    assert films[0].metadata == {"year": 2000}
    faq = read_documents(corpus["csv"])
    assert [(d.doc_id, d.title) for d in faq] == [("faq-1", "Refunds"), ("faq-2", "Shipping")]
    (html,) = read_documents(corpus["html"])
    assert html.title == "Volcanoes" and "## Eruptions" in html.text and "Magma rises" in html.text
    assert "ignored script" not in html.text and "Home | About" not in html.text
    (pdf,) = read_documents(corpus["pdf"])
    assert pdf.title == "Glaciers" and "rivers of ice" in pdf.text
    (docx,) = read_documents(corpus["docx"])
    assert docx.title == "Orchids" and "## Care" in docx.text and "Phalaenopsis" in docx.text


def test_csv_without_text_column_uses_all_columns(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("name,city\nAda,London\n", encoding="utf-8")
    (doc,) = read_documents(path)
    assert doc.text == "name: Ada\ncity: London"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.md", b"", "empty"),
        ("blank.txt", b"  \n\n", "empty"),
        ("binary.txt", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00garbage", "binary"),
        ("gbk.txt", "中文内容".encode("gbk"), "not UTF-8"),
        ("truncated.pdf", b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog", "not a readable PDF"),
        ("fake.docx", b"this is not a zip file", "not a readable .docx"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": broken\n', "line 2 is not valid JSON"),
        ("notext.jsonl", b'{"body": "x"}\n', "line 1 has no string field 'text'"),
        ("image.png", b"\x89PNG", "unsupported file type"),
    ],
)
def test_bad_files_raise_a_document_error_naming_file_and_cause(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DocumentError, match=message) as info:
        read_documents(path)
    assert str(path) in str(info.value)


def test_real_truncated_pdf_is_reported(corpus, tmp_path):
    data = corpus["pdf"].read_bytes()
    cut = tmp_path / "cut.pdf"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(DocumentError, match="PDF"):
        read_documents(cut)


def test_find_files_expands_folders_and_skips_hidden(tmp_path, corpus):
    (corpus["md"].parent / ".hidden.md").write_text("# secret", encoding="utf-8")
    (corpus["md"].parent / "photo.png").write_bytes(b"\x89PNG")
    files, skipped = find_files([corpus["md"].parent])
    assert {f.name for f in files} == {p.name for p in corpus.values()}
    assert [s.name for s in skipped] == ["photo.png"]


def test_find_files_rejects_missing_paths_and_named_unsupported_files(tmp_path):
    with pytest.raises(IngestError, match="does not exist"):
        find_files([tmp_path / "missing"])
    with pytest.raises(IngestError, match="no paths"):
        find_files([])
    (tmp_path / "x.xyz").write_text("x")
    with pytest.raises(IngestError, match="unsupported file type '.xyz'"):
        find_files([tmp_path / "x.xyz"])
