"""Threshold calibration: the choice on hand-computed scores, the manifest write, the command."""

import json

import pytest

from ragbot import KnowledgeBase, Settings
from ragbot.evaluation.calibration import (
    CalibrationError,
    calibrate,
    choose_threshold,
    shipped_questions,
    threshold_sweep,
    write_files,
    write_threshold,
)

from helpers import run_cli

GROUNDED = [0.9, 0.8, 0.7]
FALLBACK = [0.5, 0.6, 0.75]
SCORES, LABELS = GROUNDED + FALLBACK, [True] * 3 + [False] * 3


def test_the_sweep_has_one_point_per_distinct_routing():
    points = threshold_sweep(SCORES, LABELS)
    assert len(points) == 7  # below all, between each of the 6 sorted scores, above all
    assert points[0].accuracy == 0.5 and points[0].recall == 1.0  # everything grounded
    assert points[-1].accuracy == 0.5 and points[-1].recall == 0.0  # everything falls back
    assert all(low < p.threshold <= high for p in points for low, high in [p.gap])


def test_ties_go_to_the_middle_of_the_widest_gap():
    # (0.6, 0.7] and (0.75, 0.8] both route 5 of 6 right with balanced accuracy (1 + 2/3) / 2;
    # the first gap is twice as wide, so its middle is the safer threshold
    chosen = choose_threshold(threshold_sweep(SCORES, LABELS))
    assert chosen.threshold == 0.65 and chosen.gap == (0.6, 0.7)
    assert chosen.accuracy == pytest.approx(5 / 6) and chosen.balanced_accuracy == pytest.approx(5 / 6)
    assert (chosen.precision, chosen.recall) == (0.75, 1.0)


def test_a_minimum_precision_takes_the_highest_recall_that_reaches_it():
    chosen = choose_threshold(threshold_sweep(SCORES, LABELS), min_precision=1.0)
    assert chosen.threshold == 0.78 and chosen.precision == 1.0 and chosen.recall == pytest.approx(2 / 3)
    with pytest.raises(CalibrationError, match="no threshold reaches a grounded precision"):
        choose_threshold(threshold_sweep([0.5, 0.5], [True, False]), min_precision=1.0)


@pytest.fixture
def kb(hash_settings, tmp_path):
    path = tmp_path / "kb.jsonl"
    docs = [
        {"id": "film-1", "title": "卧虎藏龙", "text": "卧虎藏龙是李安执导的武侠电影，2000年上映。"},
        {"id": "nile", "title": "尼罗河", "text": "尼罗河是非洲的一条大河，流经乌干达、南苏丹、苏丹和埃及。"},
    ]
    path.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in docs), encoding="utf-8")
    kb = KnowledgeBase.open(hash_settings, create=True)
    kb.ingest([path])
    return kb


LABELLED = [
    {"id": "g1", "question": "卧虎藏龙是谁导演的？", "expected_route": "grounded"},
    {"id": "g2", "question": "尼罗河流经哪些国家？", "expected_route": "grounded"},
    {"id": "g3", "question": "它是哪年上映的？", "rewrite": "卧虎藏龙是哪年上映的？", "gold_passage_ids": ["film-1"]},
    {"id": "f1", "question": "怎么烤面包？", "expected_route": "fallback"},
    {"id": "f2", "question": "How do I bake bread?", "expected_route": "fallback"},
    {"id": "f3", "question": "你好", "expected_route": "fallback"},
]


def test_calibrate_separates_the_labelled_questions_and_writes_the_manifest(kb, tmp_path):
    cal = calibrate(LABELLED, kb)
    scores = {r["id"]: r["score"] for r in cal.rows}
    low, high = max(scores[i] for i in ("f1", "f2", "f3")), min(scores[i] for i in ("g1", "g2", "g3"))
    assert low < cal.threshold <= high and cal.chosen.gap == (low, high)
    assert cal.chosen.accuracy == 1.0 and cal.current.threshold == 0.3
    assert {r["id"]: r["question"] for r in cal.rows}["g3"] == "卧虎藏龙是哪年上映的？"  # the gold rewrite

    assert write_threshold(kb, cal.threshold) == cal.threshold
    assert KnowledgeBase.open(Settings(embedder="hash", index=kb.directory)).threshold == cal.threshold
    files = write_files(cal, tmp_path / "cal", manifest_threshold=cal.threshold)
    data = json.loads(files["json"].read_text())
    assert data["chosen"]["threshold"] == data["manifest_threshold"] == cal.threshold
    assert data["labelled"] == {"grounded": 3, "fallback": 3}
    assert files["plot"].read_bytes()[:4] == b"\x89PNG"


def test_calibration_needs_both_kinds_of_question(kb):
    with pytest.raises(CalibrationError, match="has 2 grounded and 0 fallback"):
        calibrate(LABELLED[:2], kb)


def test_the_shipped_set_labels_questions_for_the_bundled_knowledge_base():
    qs = shipped_questions()
    routes = [c.expected_route for c in qs.cases]
    assert not qs.bad_rows and len(qs.cases) >= 70
    assert routes.count("grounded") >= 30 and routes.count("fallback") >= 30


def test_cli_calibrate_reports_the_trade_off_and_writes_the_threshold(kb, tmp_path):
    path = tmp_path / "labelled.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in LABELLED), encoding="utf-8")
    env = {"RAGBOT_EMBEDDER": "hash"}
    out = run_cli("calibrate", str(path), "--kb", str(kb.directory), "--write", "--out", "cal", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    chosen = json.loads((tmp_path / "cal" / "calibration.json").read_text())["chosen"]["threshold"]
    assert "current threshold 0.300: accuracy 100.0%" in out.stdout
    assert f"Wrote threshold {chosen:.4f} to the manifest" in out.stdout and "<- chosen" in out.stdout
    info = run_cli("info", "--index", str(kb.directory), env=env)
    assert json.loads(info.stdout)["threshold"] == chosen
    assert (tmp_path / "cal" / "calibration.png").stat().st_size > 10_000

    refused = run_cli("calibrate", "--kb", str(kb.directory), env=env)
    assert refused.returncode != 0 and "give a labelled question file" in refused.stderr
