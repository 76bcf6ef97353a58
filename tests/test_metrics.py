"""Each evaluation metric against values computed by hand."""

import math

import pytest

from ragbot.evaluation import metrics


def test_exact_match_ignores_punctuation_spaces_and_case():
    assert metrics.exact_match("北京今天天气怎么样？", "北京 今天天气怎么样")
    assert metrics.exact_match("Is throat cancer treatable?", "is throat cancer treatable")
    assert not metrics.exact_match("北京今天天气怎么样", "上海今天天气怎么样")


def test_corpus_bleu4_by_words_for_english():
    # 1-4-gram precisions 4/5, 3/4, 2/3, 1/2, no brevity penalty: (0.2) ** (1/4) = 0.66874
    assert metrics.corpus_bleu(["a b c d e"], ["a b c d f"]) == pytest.approx(66.874, abs=0.01)
    assert metrics.corpus_bleu(["Is throat cancer treatable?"], ["Is throat cancer treatable?"]) == pytest.approx(100)


def test_corpus_bleu4_by_characters_for_chinese():
    # every n-gram of the 6 characters matches; brevity penalty exp(1 - 7/6) = 0.84648
    assert metrics.corpus_bleu(["北京今天天气"], ["北京今天天气好"]) == pytest.approx(84.648, abs=0.01)


def test_rouge_l_is_lcs_f1_by_character_for_chinese_and_by_word_for_english():
    # LCS 北京今天天气 = 6; precision 6/6, recall 6/8 -> F1 = 1.5 / 1.75
    assert metrics.rouge_l("北京今天天气", "北京今天的天气好") == pytest.approx(6 / 7)
    # LCS "the capital of france" = 4 of 6 words each way
    assert metrics.rouge_l("what is the capital of France", "the capital of France is what") == pytest.approx(2 / 3)
    assert metrics.rouge_l("", "") == 1.0 and metrics.rouge_l("abc", "") == 0.0


def test_token_f1_counts_overlapping_tokens():
    # common: the, cat -> precision 2/3, recall 2/4 -> F1 4/7
    assert metrics.token_f1("the cat sat", "the cat the dog") == pytest.approx(4 / 7)
    # 乌干达和埃及 (6 characters) all occur in the 8 characters of the reference
    assert metrics.token_f1("乌干达和埃及", "埃及、苏丹和乌干达") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert metrics.token_f1("完全不同", "abc") == 0.0


def test_recall_at_k_and_mrr_from_ranks():
    figures = metrics.ranking_metrics([1, 3, None, 7], ks=(1, 5, 10))
    assert figures["recall@1"] == 0.25
    assert figures["recall@5"] == 0.5
    assert figures["recall@10"] == 0.75
    assert figures["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 7) / 4)
    # MRR is cut at the largest k: a rank beyond it counts as not found
    assert metrics.ranking_metrics([12], ks=(1, 10))["mrr"] == 0.0
    assert metrics.recall_curve([1, 3, None, 7], 3) == [0.25, 0.25, 0.5]


def test_routing_precision_recall_accuracy_and_confusion():
    expected = ["grounded", "grounded", "grounded", "fallback", "fallback"]
    predicted = ["grounded", "fallback", "grounded", "grounded", "fallback"]
    r = metrics.routing_metrics(expected, predicted)
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["precision"] == pytest.approx(2 / 3)  # 2 of 3 grounded routes were right
    assert r["recall"] == pytest.approx(2 / 3)  # 2 of 3 in-KB questions were grounded
    assert r["fallback_recall"] == pytest.approx(1 / 2)
    assert r["confusion"] == {"grounded": {"grounded": 2, "fallback": 1}, "fallback": {"grounded": 1, "fallback": 1}}


def test_routing_counts_memory_answers_as_not_grounded():
    r = metrics.routing_metrics(["grounded", "fallback"], ["memory", "memory"])
    assert r["accuracy"] == 0.5 and r["recall"] == 0.0 and math.isnan(r["precision"])


def test_percentiles_interpolate_between_ranks():
    values = [1, 2, 3, 4, 10]
    assert metrics.percentile(values, 50) == 3
    assert metrics.percentile(values, 95) == pytest.approx(8.8)  # 4 + 0.8 * (10 - 4)
    summary = metrics.latency_summary(values)
    assert (summary["p50_s"], summary["total_s"], summary["n"]) == (3, 20, 5)
    assert math.isnan(metrics.percentile([], 50))
