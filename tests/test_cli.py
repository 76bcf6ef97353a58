"""The ``ragbot`` command: real files, exit codes, one-line errors.

Most tests run the command in-process (``run_cli``: the same ``main`` as the installed command,
in a fraction of the time); the smoke tests at the end start the real ``python -m ragbot``.
"""

import json

import pytest

from helpers import run_cli, run_cli_process

HASH = {"RAGBOT_EMBEDDER": "hash"}


def test_ingest_then_search_json(corpus, tmp_path):
    index = str(tmp_path / "idx")
    ingest = run_cli("ingest", str(corpus["md"].parent), "--index", index, env=HASH)
    assert ingest.returncode == 0, ingest.stderr
    assert "7 files" in ingest.stdout and "added" in ingest.stdout and "unchanged" in ingest.stdout

    found = run_cli("search", "卧虎藏龙的导演", "--index", index, "--k", "2", "--json", env=HASH)
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)
    assert set(result) == {"query", "threshold", "hits"} and len(result["hits"]) == 2
    top = result["hits"][0]
    assert set(top) == {"id", "doc_id", "source", "title", "text", "score", "above_threshold"}
    assert (top["doc_id"], top["title"], top["above_threshold"]) == ("film-1", "卧虎藏龙", True)


def test_search_text_output_marks_threshold(corpus, tmp_path):
    index = str(tmp_path / "idx")
    run_cli("ingest", str(corpus["md"].parent), "--index", index, env=HASH)
    out = run_cli("search", "尼罗河", "--index", index, "--threshold", "0.99", env=HASH)
    assert out.returncode == 0
    assert "threshold 0.990" in out.stdout and "[below threshold] 尼罗河" in out.stdout
    assert "Nothing clears the threshold" in out.stdout


def test_config_file_and_environment_are_used(corpus, tmp_path):
    (tmp_path / "ragbot.toml").write_text(f'embedder = "hash"\nindex = "{tmp_path / "cfg-idx"}"\n')
    assert run_cli("ingest", str(corpus["txt"]), cwd=tmp_path).returncode == 0
    out = run_cli("search", "green tea", "--json", cwd=tmp_path, env={"RAGBOT_TOP_K": "1"})
    assert len(json.loads(out.stdout)["hits"]) == 1


def test_user_errors_are_one_line_with_nonzero_exit(tmp_path, corpus):
    cases = [
        (["ingest", str(tmp_path / "missing"), "--index", str(tmp_path / "i")], "does not exist"),
        (["search", "x", "--index", str(tmp_path / "none")], "no index at"),
        (["search", "   ", "--index", str(tmp_path / "none")], "no index at"),
        (["ingest", str(corpus["txt"]), "--chunk-tokens", "8"], "chunk_tokens"),
    ]
    for args, message in cases:
        out = run_cli(*args, env=HASH)
        assert out.returncode == 1, (args, out.stdout)
        assert out.stderr.startswith("ragbot: error: ") and message in out.stderr
        assert out.stderr.count("\n") == 1, out.stderr


def test_empty_query_after_index_exists(corpus, tmp_path):
    index = str(tmp_path / "idx")
    run_cli("ingest", str(corpus["txt"]), "--index", index, env=HASH)
    out = run_cli("search", "  ", "--index", index, env=HASH)
    assert out.returncode == 1 and "query is empty" in out.stderr


def test_bad_setting_in_environment_is_named(tmp_path):
    out = run_cli("search", "x", env={"RAGBOT_TOP_K": "lots"})
    assert out.returncode == 1
    assert "RAGBOT_TOP_K" in out.stderr and "'lots'" in out.stderr


def test_folder_with_a_bad_file_reports_it_and_ingests_the_rest(corpus, tmp_path):
    (corpus["md"].parent / "gbk.txt").write_bytes("中文".encode("gbk"))
    out = run_cli("ingest", str(corpus["md"].parent), "--index", str(tmp_path / "idx"), env=HASH)
    assert out.returncode == 0
    assert "gbk.txt: is not UTF-8" in out.stderr and "1 file(s) failed" in out.stdout


def test_info_prints_the_manifest(corpus, tmp_path):
    index = str(tmp_path / "idx")
    run_cli("ingest", str(corpus["md"]), "--index", index, env=HASH)
    info = json.loads(run_cli("info", "--index", index, env=HASH).stdout)
    assert info["embedder"] == "hash:char-bigrams-256" and info["chunks"] == 2
    assert info["chunk_tokens"] == 256 and info["index_type"] == "flat"
    # the model each role would use, named without loading it (a local adapter shows as base+adapter)
    (tmp_path / "rewriter.gguf").write_bytes(b"GGUF")
    roles = {
        **HASH,
        "RAGBOT_LLM": "local",
        "RAGBOT_REWRITE_MODEL": "qwen2.5-0.5b",
        "RAGBOT_REWRITE_LORA_PATH": str(tmp_path / "rewriter.gguf"),
        "RAGBOT_REWRITE_PROMPT": "rewrite_trained",
    }
    models = json.loads(run_cli("info", "--index", index, env=roles).stdout)["models"]
    assert models == {
        "answer": "qwen2.5-1.5b",
        "rewrite": "qwen2.5-0.5b+rewriter.gguf",
        "rewrite_prompt": "rewrite_trained",
    }


# --- smoke tests: the real command in a new interpreter -----------------------------------------------


@pytest.mark.slow
def test_real_command_prints_help():
    out = run_cli_process("--help")
    assert out.returncode == 0, out.stderr
    for command in ("ingest", "search", "ask", "chat", "eval", "finetune"):
        assert command in out.stdout


@pytest.mark.slow
def test_real_command_ingests_then_searches(corpus, tmp_path):
    index = str(tmp_path / "idx")
    ingest = run_cli_process("ingest", str(corpus["txt"]), "--index", index, env=HASH)
    assert ingest.returncode == 0, ingest.stderr
    found = run_cli_process("search", "green tea", "--index", index, "--json", env=HASH)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["hits"][0]["source"].endswith("tea.txt")


@pytest.mark.slow
def test_real_command_error_is_one_line_and_exit_1(tmp_path):
    out = run_cli_process("search", "x", "--index", str(tmp_path / "none"), env=HASH)
    assert out.returncode == 1
    assert out.stderr.startswith("ragbot: error: ") and "no index at" in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
