"""``ragbot finetune prepare``: each output format, the seeded split, the sources, and the shipped question set."""

import json
import re
from pathlib import Path

import pytest

from ragbot import KnowledgeBase
from ragbot.conversation.bot import RagBot
from ragbot.conversation.prompts import load_prompt
from ragbot.errors import TrainingFileError
from ragbot.evaluation.question_sets import read_questions
from ragbot.finetune.data import prepare
from ragbot.testing.fakes import EchoChatModel

from helpers import run_cli

SHIPPED = Path(__file__).resolve().parent.parent / "ragbot" / "data" / "qa_default_kb.jsonl"


def system_prompt(name: str) -> str:
    return load_prompt(name).system.template.strip()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def settings(hash_settings, corpus, tmp_path):
    settings = hash_settings.replace(threshold=0.35, sessions=tmp_path / "s.sqlite")
    KnowledgeBase.open(settings, create=True).ingest([corpus["md"].parent])
    return settings


@pytest.fixture
def nile_set(tmp_path) -> Path:
    """A two-turn Chinese conversation with a gold document, and an English row with no answer."""
    return write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"id": "a", "conv_id": "c1", "turn": 1, "question": "尼罗河是什么？", "answer": "尼罗河是非洲的一条大河。",
             "gold_passage_ids": ["docs/nile.md"]},
            {"id": "b", "conv_id": "c1", "turn": 2, "history": ["尼罗河是什么？", "尼罗河是非洲的一条大河。"],
             "history_roles": ["user", "assistant"], "question": "它流经哪些国家？", "rewrite": "尼罗河流经哪些国家？",
             "answer": "乌干达、南苏丹、苏丹和埃及。", "gold_passage_ids": ["docs/nile.md"]},
            {"id": "c", "question": "What is green tea?"},
        ],
    )  # fmt: skip


def test_question_set_with_passages_gives_the_bots_own_prompts(settings, nile_set, tmp_path):
    report = prepare([nile_set], tmp_path / "out", settings=settings, with_passages=True, valid_share=0)
    assert report.files == {"sft.train.jsonl": 2, "legacy.train.jsonl": 2}
    assert [(s.origin, s.reason) for s in report.skipped] == [("qa.jsonl, line 3", "no answer")]
    first, second = (r["messages"] for r in read_jsonl(tmp_path / "out" / "sft.train.jsonl"))
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[0]["content"] == system_prompt("grounded.zh")
    # the passages are numbered and delimited exactly as the bot's grounded prompt does
    assert first[1]["content"].startswith("<资料>\n[1] 尼罗河 > ")
    assert "</资料>\n\n问题：尼罗河是什么？\n（请只根据上面的资料回答" in first[1]["content"]
    assert first[2] == {"role": "assistant", "content": "尼罗河是非洲的一条大河。 [1]"}  # cites its gold passage
    # the follow-up: the earlier turn is context only, the prompt uses the standalone question
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user", "assistant"]
    assert second[1] == {"role": "user", "content": "尼罗河是什么？"}
    assert second[2] == {"role": "assistant", "content": "尼罗河是非洲的一条大河。", "weight": 0}
    assert "问题：尼罗河流经哪些国家？" in second[3]["content"] and "流经国家" in second[3]["content"]
    assert "weight" not in second[4]


def test_retrieved_passages_are_the_ones_the_bot_would_show(settings, tmp_path):
    # at a low threshold 卧虎藏龙 is confident for a question about 霸王别姬; the bot shows only the passages
    # about the film the question names (and those it cannot check), so the training prompt must too
    low = settings.replace(threshold=0.05)
    question = "霸王别姬是谁执导的电影？"
    source = write_jsonl(tmp_path / "qa.jsonl", [{"question": question, "answer": "陈凯歌。"}])
    prepare([source], tmp_path / "out", settings=low, with_passages=True, valid_share=0)
    (record,) = read_jsonl(tmp_path / "out" / "sft.train.jsonl")
    shown = RagBot(KnowledgeBase.open(low), EchoChatModel(), settings=low).prepare(question).sources
    prompt = record["messages"][1]["content"]
    assert re.findall(r"^\[\d+\] ([^>\n]*?)(?: > .*)?$", prompt, re.M) == [h.title for h in shown] and len(shown) >= 2
    assert shown[0].title == "霸王别姬" and "卧虎藏龙" not in prompt


def test_without_passages_the_general_prompt_is_used_and_citations_dropped(settings, tmp_path):
    source = write_jsonl(
        tmp_path / "qa.jsonl",
        [{"question": "How do refunds work?", "answer": "Refunds are paid within 14 days [1]."}],
    )
    prepare([source], tmp_path / "out", settings=settings, valid_share=0)
    (row,) = read_jsonl(tmp_path / "out" / "sft.train.jsonl")
    assert row["messages"] == [
        {"role": "system", "content": system_prompt("general.en")},
        {"role": "user", "content": "How do refunds work?"},
        {"role": "assistant", "content": "Refunds are paid within 14 days."},
    ]


def test_legacy_file_and_manifest_record_how_to_call_the_model(settings, nile_set, tmp_path):
    report = prepare([nile_set], tmp_path / "out", settings=settings, valid_share=0, seed=7)
    for row in read_jsonl(tmp_path / "out" / "legacy.train.jsonl"):
        assert row["prompt"].endswith("\n\n###\n\n") and row["prompt"].startswith(system_prompt("general.zh"))
        assert row["completion"].startswith(" ") and row["completion"].endswith(" END")
    last = read_jsonl(tmp_path / "out" / "legacy.train.jsonl")[-1]
    assert (
        "\n\nUser: 尼罗河是什么？\n\nAssistant: 尼罗河是非洲的一条大河。\n\nUser: 尼罗河流经哪些国家？\n\n###\n\n"
        in last["prompt"]
    )
    manifest = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert manifest["legacy"] == {
        "separator": "\n\n###\n\n",
        "stop": " END",
        "completion_leading_space": True,
        "prompt_format": manifest["legacy"]["prompt_format"],
    }
    assert manifest["seed"] == 7 and manifest["valid_share"] == 0 and manifest["sources"] == [str(nile_set)]
    assert manifest["files"] == report.files and manifest["skipped"] == [
        {"origin": "qa.jsonl, line 3", "reason": "no answer"}
    ]


def test_saved_conversations_only_good_turns_and_corrections_as_preference_pairs(settings, tmp_path):
    bot = RagBot(KnowledgeBase.open(settings), EchoChatModel())
    trip = bot.conversation("trip")
    trip.ask("尼罗河是什么？")
    trip.ask("它流经哪些国家？")
    trip.ask("怎么烤面包？")
    trip.feedback("good", turn=0)
    trip.feedback("bad", "尼罗河流经乌干达、南苏丹、苏丹和埃及 [1]。", turn=1)
    bot.conversation("other").ask("What is green tea?")

    report = prepare(["sessions:trip"], tmp_path / "out", settings=settings, only_good=True, with_passages=True,
                     valid_share=0)  # fmt: skip
    assert report.files == {"sft.train.jsonl": 2, "dpo.train.jsonl": 1, "legacy.train.jsonl": 2}
    assert [(s.origin, s.reason) for s in report.skipped] == [("sessions:trip, turn 3", "not marked good")]
    sft = read_jsonl(tmp_path / "out" / "sft.train.jsonl")
    # the passages come from what the turn stored, not from a new search
    stored = trip.bot.store.turns("trip")[0].meta["passages"][0]["text"]
    assert stored in sft[0]["messages"][1]["content"]
    assert sft[1]["messages"][-1]["content"] == "尼罗河流经乌干达、南苏丹、苏丹和埃及 [1]。"
    (pair,) = read_jsonl(tmp_path / "out" / "dpo.train.jsonl")
    assert set(pair) == {"input", "preferred_output", "non_preferred_output"}
    assert [m["role"] for m in pair["input"]["messages"]] == ["system", "user", "assistant", "user"]
    assert pair["input"]["messages"][-1]["content"].startswith("<资料>\n[1] ")
    assert pair["preferred_output"] == [{"role": "assistant", "content": "尼罗河流经乌干达、南苏丹、苏丹和埃及 [1]。"}]
    assert pair["non_preferred_output"][0]["content"].startswith("(fake model) You asked: 它流经哪些国家？")

    everything = prepare(["sessions"], tmp_path / "all", settings=settings, valid_share=0)
    # a general answer is learnt without the label the bot adds itself
    assert everything.files["sft.train.jsonl"] == 4
    bread = read_jsonl(tmp_path / "all" / "sft.train.jsonl")[2]["messages"][-1]["content"]
    assert bread == "(fake model) You asked: 怎么烤面包？"


def test_split_is_seeded_and_never_splits_a_conversation(settings, tmp_path):
    rows = [
        {"id": f"c{c}-t{t}", "conv_id": f"c{c}", "turn": t, "question": f"question {c}.{t}", "answer": f"answer c{c}"}
        for c in range(10)
        for t in range(3)
    ]
    source = write_jsonl(tmp_path / "qa.jsonl", rows)

    def split(out, seed):
        prepare([source], tmp_path / out, settings=settings, valid_share=0.3, seed=seed)
        sides = {}
        for part in ("train", "valid"):
            answers = [r["messages"][-1]["content"] for r in read_jsonl(tmp_path / out / f"sft.{part}.jsonl")]
            sides[part] = sorted(set(answers))
            assert len(answers) == 3 * len(sides[part])  # every turn of a conversation on the same side
        return sides

    first = split("a", seed=0)
    assert len(first["valid"]) == 3 and not set(first["train"]) & set(first["valid"])
    assert split("b", seed=0) == first
    assert (tmp_path / "a" / "sft.valid.jsonl").read_bytes() == (tmp_path / "b" / "sft.valid.jsonl").read_bytes()
    assert split("c", seed=1) != first


def test_plain_prompt_completion_and_question_answer_files(settings, tmp_path):
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Capital of France?\n\n###\n\n", "completion": " Paris END"}])
    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\nWhat is tea?,A drink.\nEmpty?,\n", encoding="utf-8")
    report = prepare([pc, qa], tmp_path / "out", settings=settings, valid_share=0)
    rows = read_jsonl(tmp_path / "out" / "sft.train.jsonl")
    assert [r["messages"][1:] for r in rows] == [
        [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}],
        [{"role": "user", "content": "What is tea?"}, {"role": "assistant", "content": "A drink."}],
    ]
    assert [(s.origin, s.reason) for s in report.skipped] == [("qa.csv, line 3", "no answer")]


def test_bad_sources_get_errors_naming_the_file(settings, tmp_path):
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello", "label": "x"}])
    with pytest.raises(TrainingFileError, match=r"odd.jsonl: found columns label, text; a training source needs"):
        prepare([odd], tmp_path / "out", settings=settings)
    with pytest.raises(TrainingFileError, match="no saved conversation named 'nobody'"):
        prepare(["sessions:nobody"], tmp_path / "out", settings=settings)


def test_cli_errors_are_one_line_with_exit_status_1(tmp_path):
    broken = tmp_path / "pc.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": \n', encoding="utf-8")
    for args, message in [
        (["nothing.jsonl"], "ragbot: error: unknown source 'nothing.jsonl': no such file; give a .jsonl or .csv file"),
        ([str(broken)], f"ragbot: error: {broken}, line 2: not valid JSON (Expecting value at column 31)"),
    ]:
        result = run_cli("finetune", "prepare", *args, "--out", str(tmp_path / "out"))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith(message), result.stderr


def test_shipped_question_set_prepares_files_that_pass_validation(tmp_path):
    """Done when: from the default knowledge base and the shipped set, prepare then validate pass."""
    questions = read_questions(SHIPPED)
    assert len(questions.cases) >= 40 and not questions.bad_rows
    langs = [c.lang for c in questions.cases]
    assert 0.4 <= langs.count("zh") / len(langs) <= 0.6 and sum(bool(c.history) for c in questions.cases) >= 3
    repo = SHIPPED.parents[2]  # gold ids are the sources as ragbot shows them: knowledge/...
    assert all(c.answer and (repo / c.gold_passage_ids[0]).is_file() for c in questions.cases)

    env = {"RAGBOT_EMBEDDER": "hash"}
    made = run_cli("finetune", "prepare", str(SHIPPED), "--out", str(tmp_path / "ft"), "--with-passages", env=env)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("Wrote sft.train.jsonl ")
    files = sorted(p.name for p in (tmp_path / "ft").glob("*.jsonl"))
    assert files == ["legacy.train.jsonl", "legacy.valid.jsonl", "sft.train.jsonl", "sft.valid.jsonl"]
    for name in files:
        checked = run_cli("finetune", "validate", str(tmp_path / "ft" / name), env=env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert ", 0 problem(s)" in checked.stdout and "tokens per example: min " in checked.stdout
        assert "estimated training cost for " in checked.stdout and " per epoch, $" in checked.stdout
    grounded = [r for r in read_jsonl(tmp_path / "ft" / "sft.train.jsonl") if "<资料>" in r["messages"][1]["content"]]
    assert grounded, "some examples carry the retrieved passages"
