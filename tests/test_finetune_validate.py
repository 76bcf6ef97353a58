"""``ragbot finetune validate``: each rule on a hand-made file, --fix, token counts and the cost estimate."""

import json

import pytest

from ragbot.errors import FinetuneError, TrainingFileError
from ragbot.finetune.validate import load_prices, validate_file

from helpers import run_cli

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]  # one token each


def chat(user: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return str(path)


def good_rows(n: int = 10) -> list[dict]:
    return [chat(WORDS[i % 10], WORDS[(i + 1) % 10] + str(i)) for i in range(n)]


def rules(report) -> list[tuple[int, str]]:
    return [(p.line, p.rule) for p in report.problems]


@pytest.fixture
def prices(tmp_path):
    """A price table with round numbers and a tiny context, so the arithmetic is checkable by hand."""
    path = tmp_path / "prices.toml"
    path.write_text(
        'default_model = "tiny"\ndefault_legacy_model = "tiny-legacy"\n'
        '[models.tiny]\ntraining_per_1m = 2.0\ncontext = 40\nencoding = "cl100k_base"\n'
        '[models.tiny-legacy]\ntraining_per_1m = 1.0\ncontext = 40\nencoding = "cl100k_base"\n'
    )
    return str(path)


def test_a_clean_chat_file_passes_with_token_counts_and_cost_by_hand(tmp_path, prices):
    rows = [chat(w, WORDS[(i + 1) % 10]) for i, w in enumerate(WORDS)]  # every content is one token
    report = validate_file(write(tmp_path / "train.jsonl", rows), prices=prices, epochs=3)
    assert report.ok and report.format == "chat" and report.examples == 10
    # per example: 2 messages x (3 + 1 token) + 3 to prime the reply = 11 tokens
    assert report.tokens == [11] * 10
    assert report.token_stats() == {"total": 110, "min": 11, "mean": 11.0, "p95": 11, "max": 11}
    assert report.billed_tokens_per_epoch == 110
    assert report.cost_per_epoch == pytest.approx(110 * 2.0 / 1_000_000)
    assert report.cost == pytest.approx(3 * 110 * 2.0 / 1_000_000)
    assert "$0.0002 per epoch, $0.0007 for 3 epochs" in report.summary()


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"messages": [{"role": "user", "content": "hi"}', (3, "json")),
        ('["a list"]', (3, "not-object")),
        ({"messages": []}, (3, "empty-example")),
        ({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": ""}]}, (3, "empty-example")),
        ({"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, (3, "unknown-role")),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, (3, "role-order")),
        ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}, (3, "role-order")),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}, (3, "empty-content")),
        ({"messages": [{"role": "user", "content": "a "}, {"role": "assistant", "content": "b"}]}, (3, "whitespace")),
        (chat("two", "three1"), (3, "duplicate")),  # the same as line 2
        (chat(" ".join(["one"] * 40), "two"), (3, "too-long")),
        ({"prompt": "x", "completion": "y"}, (3, "format")),
    ],
)
def test_each_rule_names_its_line(tmp_path, prices, bad_line, expected):
    rows = good_rows(12)
    rows.insert(2, bad_line)  # file line 3
    report = validate_file(write(tmp_path / "train.jsonl", rows), prices=prices)
    assert rules(report) == [expected]


def test_problem_messages_are_short_and_say_why(tmp_path, prices):
    rows = [*good_rows(10), {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}]
    rows.insert(0, '{"messages": [')
    report = validate_file(write(tmp_path / "train.jsonl", rows), prices=prices)
    shown = report.summary()
    assert "line 1: not valid JSON (Expecting value at column 15) [json]" in shown
    assert (
        "line 12: roles user, user: expected an optional system message, then user and assistant in turn, "
        "ending with assistant [role-order]"
    ) in shown


def test_too_few_examples_is_a_whole_file_problem_except_for_validation_files(tmp_path, prices):
    report = validate_file(write(tmp_path / "train.jsonl", good_rows(3)), prices=prices)
    assert [str(p) for p in report.problems] == ["file: 3 usable examples; fine-tuning needs at least 10 [too-few]"]
    assert validate_file(write(tmp_path / "sft.valid.jsonl", good_rows(3)), prices=prices).ok


def test_preference_rules(tmp_path, prices):
    def pair(user, good, bad, last_role="user"):
        messages = [{"role": "user", "content": user}]
        if last_role == "assistant":
            messages.append({"role": "assistant", "content": "x"})
        return {
            "input": {"messages": messages},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}],
        }

    rows = [pair(w, "yes", "no") for w in WORDS]
    rows += [pair("a", "yes", "no", last_role="assistant"), pair("b", "same", "same")]
    rows.append({**pair("c", "yes", "no"), "non_preferred_output": "no"})
    report = validate_file(write(tmp_path / "dpo.train.jsonl", rows), prices=prices)
    assert report.format == "preference"
    assert rules(report) == [(11, "role-order"), (12, "same-outputs"), (13, "output")]
    assert "ending with user" in report.problems[0].message
    # input: one message (3 + 1) + 3, plus one token for each output
    assert report.tokens[0] == 9


def test_legacy_rules_and_fix_add_separator_leading_space_and_stop(tmp_path, prices):
    rows = [{"prompt": f"{w}\n\n###\n\n", "completion": f" {w} END"} for w in WORDS]
    rows += [{"prompt": "eleven", "completion": "twelve"}]
    path = write(tmp_path / "legacy.train.jsonl", rows)
    report = validate_file(path, prices=prices)
    assert report.format == "prompt-completion" and report.price.model == "tiny-legacy"
    assert rules(report) == [(11, "separator"), (11, "leading-space"), (11, "stop")]
    fixed = validate_file(path, prices=prices, fix=True)
    assert fixed.ok and fixed.path == tmp_path / "legacy.train.fixed.jsonl"
    last = json.loads(fixed.path.read_text().splitlines()[-1])
    assert last == {"prompt": "eleven\n\n###\n\n", "completion": " twelve END"}
    assert dict(fixed.fixes) == {"separator added": 1, "leading space added": 1, "stop sequence added": 1}


def test_legacy_markers_come_from_prepare_json_when_present(tmp_path, prices):
    (tmp_path / "prepare.json").write_text(json.dumps({"legacy": {"separator": " ->", "stop": "\n"}}))
    rows = [{"prompt": f"{w} ->", "completion": f" {w}\n"} for w in WORDS]
    assert validate_file(write(tmp_path / "legacy.train.jsonl", rows), prices=prices).ok


def test_fix_drops_duplicates_and_empty_examples_trims_whitespace_and_keeps_what_it_cannot_fix(tmp_path, prices):
    rows = good_rows(10)
    rows += [
        chat("  one ", "two0\n"),  # a duplicate of line 1 once trimmed
        {"messages": []},
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
        "{broken",
    ]
    path = tmp_path / "train.jsonl"
    write(path, rows)
    original = path.read_text()
    report = validate_file(str(path), prices=prices, fix=True)
    assert path.read_text() == original  # the input is never overwritten
    assert report.fixed_from == path and report.path == tmp_path / "train.fixed.jsonl"
    assert dict(report.fixes) == {"duplicate dropped": 1, "empty example dropped": 1}
    # what a program cannot decide is still listed, with its line in the fixed copy
    assert rules(report) == [(11, "role-order"), (12, "json")]
    assert report.path.read_text().splitlines()[-1] == "{broken"
    assert "Fixed copy of" in report.summary() and "duplicate dropped: 1" in report.summary()


def test_price_table_lookup_and_precedence(tmp_path, prices, monkeypatch):
    bundled = load_prices()
    assert bundled.price().model == bundled.default_model
    assert bundled.price("gpt-4o-mini").model.startswith("gpt-4o-mini-")
    assert bundled.price("ft:gpt-4o-mini-2024-07-18:acme::abc123").model == "gpt-4o-mini-2024-07-18"
    with pytest.raises(FinetuneError, match="no price for model 'my-model'.*--prices FILE"):
        bundled.price("my-model")
    # the user's copy in the data home wins over the bundled table; --prices wins over both
    home_copy = tmp_path / "home" / "finetune-prices.toml"
    home_copy.parent.mkdir(parents=True, exist_ok=True)
    home_copy.write_text("[models.mine]\ntraining_per_1m = 1.5\ncontext = 100\n")
    assert load_prices().path == home_copy and load_prices().price().model == "mine"
    assert load_prices(prices).price().model == "tiny"


def test_empty_and_missing_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(TrainingFileError, match="empty.jsonl is empty; a training file holds one JSON example"):
        validate_file(tmp_path / "empty.jsonl")
    (tmp_path / "odd.jsonl").write_text('{"text": "hi"}\n')
    with pytest.raises(TrainingFileError, match="cannot tell the format from keys text"):
        validate_file(tmp_path / "odd.jsonl")


def test_cli_exit_status_and_messages(tmp_path, prices):
    clean = write(tmp_path / "clean.jsonl", good_rows(10))
    ok = run_cli("finetune", "validate", clean, "--prices", prices, "--epochs", "2")
    assert ok.returncode == 0, ok.stderr
    assert "clean.jsonl: chat format, 10 examples, 0 problem(s)" in ok.stdout
    assert "estimated training cost for tiny at $2 per 1M tokens" in ok.stdout and "for 2 epochs" in ok.stdout

    broken = write(tmp_path / "broken.jsonl", [*good_rows(10)[:4], '{"messages": [}', *good_rows(10)[4:]])
    bad = run_cli("finetune", "validate", broken, "--prices", prices)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "line 5: not valid JSON (Expecting value at column 15) [json]" in bad.stdout
    assert bad.stderr.strip() == f"ragbot: error: 1 problem(s) remain in {broken}"

    (tmp_path / "empty.jsonl").write_text("")
    empty = run_cli("finetune", "validate", str(tmp_path / "empty.jsonl"))
    assert empty.returncode == 1 and "Traceback" not in empty.stderr
    assert (
        empty.stderr.strip() == f"ragbot: error: {tmp_path / 'empty.jsonl'} is empty; a training file holds one "
        "JSON example per line"
    )

    as_json = json.loads(run_cli("finetune", "validate", clean, "--prices", prices, "--json").stdout)
    assert as_json["tokens"]["total"] == as_json["billed_tokens_per_epoch"] and as_json["problems"] == []


def test_line_separators_inside_text_do_not_split_an_example(tmp_path, prices):
    rows = [chat(w, f"line one\u2028line two {w}") for w in WORDS]
    report = validate_file(write(tmp_path / "train.jsonl", rows), prices=prices)
    assert report.ok and report.examples == 10


def test_cli_fix_writes_a_copy_and_exits_0_when_nothing_is_left(tmp_path, prices):
    rows = [{"prompt": w, "completion": w} for w in WORDS]
    path = write(tmp_path / "legacy.jsonl", rows)
    before = run_cli("finetune", "validate", path, "--prices", prices)
    assert before.returncode == 1
    assert before.stderr.strip() == f"ragbot: error: 30 problem(s) remain in {path}; --fix can fix 30 of them"
    fixed = run_cli("finetune", "validate", path, "--prices", prices, "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert fixed.stdout.startswith(
        f"Fixed copy of {path}: {tmp_path / 'legacy.fixed.jsonl'} "
        "(separator added: 10, leading space added: 10, stop sequence added: 10)"
    )
