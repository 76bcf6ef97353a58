"""A rewriter's training data (``ragbot finetune rewrite-data``): the reasoning built from the gold
rewrite, that the bot's own post-processing gives the gold rewrite back, the short prompt, the
files and manifest, and bad rows."""

import json
from pathlib import Path

import pytest

from ragbot import KnowledgeBase
from ragbot.conversation.prompts import load_prompt
from ragbot.conversation.rewrite import format_history, parse_rewrite
from ragbot.errors import TrainingFileError
from ragbot.finetune.data import prepare
from ragbot.finetune.rewrite_data import (
    RewriteRow,
    assistant_text,
    bot_standalone,
    is_rewriter_data,
    read_rewrite_rows,
    sample_rows,
    self_consistency,
    sft_record,
    write_rewrite_data,
)
from ragbot.models.chat import Message

from helpers import make_bot, run_cli, shared_file

NILE = ["尼罗河是什么？", "尼罗河是非洲的一条大河，全长约6650公里。"]
ROWS = {
    "zh_pronoun": {"id": "z1", "lang": "zh", "history": NILE, "history_roles": ["user", "assistant"],
                   "question": "它流经哪些国家？", "rewrite": "尼罗河流经哪些国家？", "needs_rewrite": True},
    "zh_omission": {"id": "z2", "lang": "zh", "history": ["西安天气", "西安今天多云转小雨"],
                    "history_roles": ["user", "assistant"], "question": "明天有雨吗", "rewrite": "西安明天有雨吗",
                    "needs_rewrite": True},
    "zh_object": {"id": "z3", "lang": "zh", "history": ["你去过开福寺吗", "去过，很安静"],
                  "history_roles": ["user", "assistant"], "question": "我没去过", "rewrite": "我没去过开福寺",
                  "needs_rewrite": True},
    "zh_negative": {"id": "z1-neg", "lang": "zh", "history": NILE, "history_roles": ["user", "assistant"],
                    "question": "尼罗河流经哪些国家？", "rewrite": "尼罗河流经哪些国家？", "needs_rewrite": False},
    # the pronoun and an omission: substituting the referent alone would not give the rewrite
    "zh_mixed": {"id": "z4", "lang": "zh", "history": ["蝙蝠侠谁演的", "本阿弗莱克"],
                 "history_roles": ["user", "assistant"], "question": "就是他演的",
                 "rewrite": "就是本阿弗莱克演的蝙蝠侠", "needs_rewrite": True},
    "en_pronoun": {"id": "e1", "lang": "en",
                   "history": ["Tell me about the Amazon river.", "It flows across South America."],
                   "history_roles": ["user", "assistant"], "question": "How long is it?",
                   "rewrite": "How long is the Amazon river?", "needs_rewrite": True},
    "canard": {"id": "canard-C_1_0-2", "lang": "en", "conv_id": "C_1_0", "turn": 2,
               "history": ["Pinhead (Hellraiser)", "Powers, weaknesses and limitations", "What was Powers?",
                           "Pinhead is an extremely powerful being, and has several supernatural abilities."],
               "history_roles": ["title", "section", "user", "assistant"],
               "question": "What are some of his abilities?",
               "rewrite": "What are some of Pinhead's supernatural abilities?", "needs_rewrite": True},
}  # fmt: skip

ASSISTANT = {
    "zh_pronoun": "思考：“它”指前面说的尼罗河。\n改写：尼罗河流经哪些国家？",
    "zh_omission": "思考：省略了主语，指的是西安。\n改写：西安明天有雨吗",
    "zh_object": "思考：省略了宾语，指的是开福寺。\n改写：我没去过开福寺",
    "zh_negative": "思考：问题本身完整。\n改写：尼罗河流经哪些国家？",
    "zh_mixed": "思考：“他”说的是本阿弗莱克，省略了“蝙蝠侠”。\n改写：就是本阿弗莱克演的蝙蝠侠",
    "en_pronoun": 'Reasoning: "it" refers to the Amazon river.\nRewrite: How long is the Amazon river?',
    "canard": 'Reasoning: "his" refers to Pinhead; the question leaves out: supernatural.\n'
    "Rewrite: What are some of Pinhead's supernatural abilities?",
}


def write_jsonl(path: Path, rows, extra_lines=()) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def row_of(tmp_path):
    def make(name: str) -> RewriteRow:
        rows, skipped = read_rewrite_rows(write_jsonl(tmp_path / f"{name}.jsonl", [ROWS[name]]))
        assert not skipped
        return rows[0]

    return make


@pytest.mark.parametrize("name", list(ROWS))
def test_the_answer_is_a_reasoning_then_the_gold_rewrite_and_the_bot_gives_it_back(row_of, name):
    r = row_of(name)
    text = assistant_text(r)
    assert text == ASSISTANT[name]
    reasoning, final = parse_rewrite(text)
    assert final == r.rewrite and reasoning == text.splitlines()[0].split("：" if r.chinese else ": ", 1)[1]
    assert bot_standalone(r, text)[0] == r.rewrite  # rewrite_question itself, the model scripted


def test_the_referent_sentence_is_what_the_substitution_reads(row_of):
    """A pure pronoun replacement is written so that the bot substitutes it (and stops generating
    after the reasoning); a mixed one is written so that the substitution leaves it alone."""
    pronoun = row_of("zh_pronoun")
    standalone, why = bot_standalone(pronoun, assistant_text(pronoun))
    assert standalone == "尼罗河流经哪些国家？" and "as the reasoning resolved it" in why
    # the reasoning alone (what the bot keeps when it stops the model there) gives the rewrite
    assert bot_standalone(pronoun, "思考：“它”指前面说的尼罗河。")[0] == "尼罗河流经哪些国家？"
    mixed = row_of("zh_mixed")
    standalone, why = bot_standalone(mixed, assistant_text(mixed))
    assert standalone == mixed.rewrite and "as the reasoning resolved it" not in why


def test_the_short_prompt_holds_the_history_as_the_cot_rewrite_formats_it(row_of):
    r = row_of("zh_pronoun")
    record = sft_record(r)
    system, user, assistant = record["messages"]
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert "\n" not in system["content"] and len(system["content"]) < 80
    history = format_history([Message("user", NILE[0]), Message("assistant", NILE[1])], True)
    assert user["content"] == f"对话历史：\n{history}\n最后的问题：它流经哪些国家？"
    assert assistant["content"] == ASSISTANT["zh_pronoun"]
    # the CoT prompt renders the same history block
    cot = load_prompt("rewrite.zh").render(history=history, question="它流经哪些国家？")[1].content
    assert history in cot
    en = sft_record(row_of("en_pronoun"))["messages"]
    assert en[1]["content"].startswith("History:\nUser: Tell me about the Amazon river.\nAssistant: It flows")
    assert en[1]["content"].endswith("\nLast question: How long is it?")


def test_canard_title_and_section_open_the_history(row_of):
    r = row_of("canard")
    assert [(m.role, m.content) for m in r.messages[:3]] == [
        ("user", "Pinhead (Hellraiser): Powers, weaknesses and limitations"),
        ("assistant", "…"),
        ("user", "What was Powers?"),
    ]
    assert r.group == "C_1_0"
    user = sft_record(r)["messages"][1]["content"]
    assert (
        "User: Pinhead (Hellraiser): Powers, weaknesses and limitations\nAssistant: …\nUser: What was Powers?" in user
    )


def test_bad_rows_are_named_by_line_and_skipped(tmp_path):
    path = write_jsonl(
        tmp_path / "rw.jsonl",
        [ROWS["zh_pronoun"], {"id": "x", "history": [], "rewrite": "尼罗河"}, {**ROWS["zh_omission"], "rewrite": " "}],
        extra_lines=['{"id": "broken", "question": ', json.dumps({**ROWS["en_pronoun"], "history_roles": ["user"]})],
    )
    rows, skipped = read_rewrite_rows(path)
    assert [r.id for r in rows] == ["z1"]
    assert [(s.origin, s.reason.split(" (")[0]) for s in skipped] == [
        ("rw.jsonl, line 2", "no question"),
        ("rw.jsonl, line 3", "empty rewrite"),
        ("rw.jsonl, line 4", "not valid JSON"),
        ("rw.jsonl, line 5", "'history_roles' has 1 roles for 2 history messages"),
    ]


def test_the_command_writes_the_files_and_the_manifest(tmp_path):
    path = write_jsonl(tmp_path / "rw.jsonl", [*ROWS.values()], extra_lines=["not json"])
    out = tmp_path / "out"
    result = run_cli("finetune", "rewrite-data", str(path), "--out", str(out), "--valid-share", "0.3", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "self-consistency 100.0% exact of 7 rows" in result.stdout
    assert "skipped rw.jsonl, line 8: not valid JSON" in result.stderr
    manifest = json.loads((out / "rewrite_data.json").read_text(encoding="utf-8"))
    assert manifest["rows_read"] == 7 and manifest["rows_skipped"] == 1
    assert len(manifest["source_sha256"]) == 64
    assert manifest["self_consistency"]["exact_rate"] == 1.0
    train = [json.loads(x) for x in (out / "sft.train.jsonl").read_text(encoding="utf-8").splitlines()]
    valid = [json.loads(x) for x in (out / "sft.valid.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(train) + len(valid) == 7 and valid
    assert manifest["files"] == {"sft.train.jsonl": len(train), "sft.valid.jsonl": len(valid)}
    # a row and its negative twin (same dialog) stay on the same side
    questions = {
        r["messages"][1]["content"].splitlines()[-1]: side for side, rs in (("t", train), ("v", valid)) for r in rs
    }
    assert questions["最后的问题：它流经哪些国家？"] == questions["最后的问题：尼罗河流经哪些国家？"]
    # the same data and seed give the same files
    again = run_cli(
        "finetune", "rewrite-data", str(path), "--out", str(tmp_path / "again"), "--valid-share", "0.3", "--seed", "1"
    )
    assert again.returncode == 0
    assert (tmp_path / "again" / "sft.train.jsonl").read_bytes() == (out / "sft.train.jsonl").read_bytes()
    checked = run_cli("finetune", "validate", str(out / "sft.train.jsonl"), "--min-examples", "1")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_sample_and_drop_inconsistent(tmp_path):
    # a gold rewrite naming something the history never mentions: the bot's guard rejects it
    invented = {**ROWS["zh_omission"], "id": "z9", "rewrite": "北京明天有雨吗"}
    path = write_jsonl(tmp_path / "rw.jsonl", [ROWS["zh_pronoun"], ROWS["zh_omission"], invented])
    report = write_rewrite_data(path, tmp_path / "out", valid_share=0, drop_inconsistent=True)
    assert report.files == {"sft.train.jsonl": 2}
    assert [(s.origin, s.reason) for s in report.skipped] == [
        ("rw.jsonl, line 3", "the bot would not give back its gold rewrite")
    ]
    assert report.manifest["self_consistency"]["failures"] == {
        "guard: the rewrite has a name in neither the history nor the question": 1
    }
    sampled = write_rewrite_data(path, tmp_path / "two", sample=2, seed=3, valid_share=0)
    assert sampled.manifest["examples"]["total"] == 2


def test_gated_keeps_only_the_rows_the_cheap_check_sends_to_the_model(tmp_path):
    """A trained rewriter is only ever asked what the cheap check lets through: a complete question
    that names its subject is left out, one with a pronoun (even if complete) is kept."""
    kept_negative = {**ROWS["zh_negative"], "id": "z4-neg", "question": "它是尼罗河吗？", "rewrite": "它是尼罗河吗？"}
    rows = [ROWS["zh_pronoun"], ROWS["zh_negative"], kept_negative]
    path = write_jsonl(tmp_path / "rw.jsonl", rows)
    report = write_rewrite_data(path, tmp_path / "out", valid_share=0, gated=True)
    written = [json.loads(line) for line in (tmp_path / "out" / "sft.train.jsonl").read_text().splitlines()]
    finals = [r["messages"][-1]["content"].splitlines()[-1] for r in written]
    assert finals == ["改写：尼罗河流经哪些国家？", "改写：它是尼罗河吗？"]
    assert [(s.origin, s.reason) for s in report.skipped] == [
        ("rw.jsonl, line 2", "the cheap check skips the model (names its subject)")
    ]
    assert report.manifest["gated"] is True
    assert report.manifest["examples"] == {"total": 2, "positives": 1, "negatives": 1}
    cli = run_cli("finetune", "rewrite-data", str(path), "--out", str(tmp_path / "cli"), "--valid-share=0", "--gated")
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / "cli" / "sft.train.jsonl").read_bytes() == (tmp_path / "out" / "sft.train.jsonl").read_bytes()


def test_rewriter_data_is_recognised_for_the_hint_to_use_it_for_the_rewrite_role(tmp_path):
    path = write_jsonl(tmp_path / "rw.jsonl", [ROWS["zh_pronoun"], ROWS["zh_omission"]])
    write_rewrite_data(path, tmp_path / "out", valid_share=0)
    assert is_rewriter_data(tmp_path / "out" / "sft.train.jsonl")
    answers = [{"messages": [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "你好"},
                             {"role": "assistant", "content": "你好！"}]}]  # fmt: skip
    assert not is_rewriter_data(write_jsonl(tmp_path / "answers.jsonl", answers))
    assert not is_rewriter_data(tmp_path / "missing.jsonl")


def test_duplicate_examples_are_written_once(tmp_path):
    """A positive whose question is already its rewrite makes the same example as its negative twin."""
    same = {**ROWS["zh_negative"], "id": "z1"}
    path = write_jsonl(tmp_path / "rw.jsonl", [same, ROWS["zh_negative"], ROWS["zh_pronoun"]])
    report = write_rewrite_data(path, tmp_path / "out", valid_share=0)
    assert report.files == {"sft.train.jsonl": 2}
    assert [(s.origin, s.reason) for s in report.skipped] == [
        ("rw.jsonl, line 2", "the same example as rw.jsonl, line 1")
    ]
    assert "skipped 1 (the same example: 1)" in report.summary()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jsonl"], "does not exist"),
        (["empty.jsonl"], "is empty"),
        (["bad.jsonl"], "no usable rewrite rows in"),
    ],
)
def test_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    (tmp_path / "bad.jsonl").write_text("not json\n", encoding="utf-8")
    result = run_cli("finetune", "rewrite-data", *[str(tmp_path / a) for a in args], "--out", str(tmp_path / "o"))
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_prepare_points_a_rewrite_set_to_rewrite_data(tmp_path, hash_settings):
    path = write_jsonl(tmp_path / "rw.jsonl", [ROWS["zh_pronoun"]])
    with pytest.raises(TrainingFileError, match="is a rewrite set: .*ragbot finetune rewrite-data"):
        prepare([path], tmp_path / "out", settings=hash_settings)


SU_FLOOR = 0.97  # measured: 98.8% on all 33,928 examples, 98.7% on this sample; the margin absorbs small guard changes


def test_self_consistency_on_su_training_rows():
    rows, skipped = read_rewrite_rows(shared_file("rewrite_zh_su2019_train.jsonl"))
    assert not skipped
    report = self_consistency(sample_rows(rows, 300, seed=0))
    assert report.rows == 300
    assert report.rate >= SU_FLOOR, report.to_dict()
    assert report.negatives_kept == report.negatives


def test_the_prompt_shows_the_history_window_the_bot_shows(tmp_path):
    """A long answer is clipped to the rewrite's per-message budget, as ``rewrite_question`` clips it."""
    from ragbot.conversation.rewrite import rewrite_question
    from ragbot.testing.fakes import ScriptedChatModel

    long_answer = "尼罗河是非洲的一条大河。" * 80
    data = {**ROWS["zh_pronoun"], "history": [NILE[0], long_answer]}
    (r,), _ = read_rewrite_rows(write_jsonl(tmp_path / "long.jsonl", [data]))
    user = sft_record(r)["messages"][1]["content"]
    model = ScriptedChatModel([assistant_text(r)])
    rewrite_question(r.question, r.messages, model, force=True, history_tokens=600, message_tokens=120)
    shown = model.calls[0].messages[-1].content  # the CoT prompt's user part: the same history block
    history = user.removeprefix("对话历史：\n").rsplit("\n最后的问题：", 1)[0]
    assert history.endswith("…") and len(history) < len(long_answer)
    assert history in shown


def test_english_names_are_given_whole(tmp_path):
    data = {**ROWS["en_pronoun"], "history": ["Tell me about Trey Songz.", "He is a singer."],
            "question": "Did Trey enjoy singing?", "rewrite": "Did Trey Songz enjoy singing?"}  # fmt: skip
    (r,), _ = read_rewrite_rows(write_jsonl(tmp_path / "name.jsonl", [data]))
    assert assistant_text(r).splitlines()[0] == 'Reasoning: "Trey" is Trey Songz.'
    assert bot_standalone(r, assistant_text(r))[0] == r.rewrite


def test_a_bot_set_to_the_trained_prompt_sends_the_training_prompt_and_reads_the_answer(hash_settings, corpus, row_of):
    kb = KnowledgeBase.open(hash_settings, create=True)
    kb.ingest([corpus["md"].parent])
    row = row_of("zh_pronoun")
    record = sft_record(row)
    bot, model = make_bot(kb, [record["messages"][-1]["content"]], rewrite_prompt="rewrite_trained")
    turn = bot.prepare(row.question, row.messages)
    sent = [m.to_dict() for m in model.calls[0].messages]
    assert sent == record["messages"][:-1]  # the prompt the model was trained on, to the character
    assert "示例" not in sent[0]["content"] and turn.standalone_question == "尼罗河流经哪些国家？"
