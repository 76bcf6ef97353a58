"""Build the routing set for the KdConv film knowledge base: in-KB and out-of-KB questions.

    python tests/data/eval_build_routing_set.py routing_film.jsonl

Reads the development data in ../shared/data at run time (it is not copied into the repo):

* grounded: every KdConv film question that names its entity (``entity_in_question``), so
  it is answerable from the film passages without the history;
* fallback: the opening question of each TREC CAsT topic (English, about anything but
  these films), plus the questions below, written for this set: Chinese questions on other
  subjects, small talk in both languages, and questions about well-known films that are NOT
  in the knowledge base (the hardest case for a score threshold: same domain, wrong film).

Each row has ``id``, ``question``, ``expected_route`` and ``kind`` (one of the groups above),
so results can be split by kind with ``ragbot eval ... --where kind=film-not-in-kb``.

    python tests/data/eval_build_routing_set.py --after-topic routing_topic.jsonl   # film knowledge base
    python tests/data/eval_build_routing_set.py --after-nile routing_nile.jsonl     # bundled knowledge base

The same questions with a conversation before them, for the topic gate (does a new subject
inherit the old topic?): ``--after-topic`` gives the KdConv follow-ups whose entity is only in the
history (grounded, gold passages) and the out-of-KB questions, 100 of the already-standalone Su et
al. questions (seed 7) and the issue's "怎么烤面包？", each after the history of a KdConv film
conversation (fallback); ``--after-nile`` puts the Chinese ones after a conversation about the
Nile, for the bundled knowledge base, next to Nile follow-ups written for this set (grounded).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

ZH_OTHER_SUBJECTS = [
    "如何预防感冒？", "北京到上海的高铁要多久？", "怎么学好数学？", "猫为什么喜欢晒太阳？", "如何提高睡眠质量？",
    "水的沸点是多少度？", "光合作用是什么？", "怎么给手机省电？", "长城有多长？", "如何申请信用卡？",
    "咖啡喝多了有什么坏处？", "怎么养绿萝？", "明天会下雨吗？", "世界上最大的海洋是哪个？", "如何写好一篇议论文？",
    "人民币汇率怎么查？", "跑步对膝盖有伤害吗？", "怎么煮米饭更好吃？", "Python怎么读取文件？", "感冒了要吃抗生素吗？",
    "地球离太阳有多远？", "如何准备面试？", "熊猫生活在哪里？", "怎么去除衣服上的油渍？", "中国有多少个省份？",
    "为什么天空是蓝色的？", "如何开始健身？", "怎样保护视力？", "西红柿炒鸡蛋怎么做？", "高血压应该注意什么？",
]  # fmt: skip
SMALL_TALK = [
    "你好", "谢谢", "再见", "早上好", "你是谁？", "今天心情不错", "哈哈哈", "你会做什么？",
    "hi", "thanks!", "good morning", "who are you?", "bye", "how are you?", "that's great", "what can you do?",
]  # fmt: skip
# Films checked to be absent from passages_zh_kdconv_film.jsonl (no passage mentions them).
FILMS_NOT_IN_KB = [
    "《楚门的世界》讲的是什么故事？", "《哈利·波特与魔法石》是哪年上映的？", "《指环王》的导演是谁？",
    "《战狼2》的票房有多少？", "《你好，李焕英》是谁主演的？", "《黑客帝国》讲了什么？", "《大圣归来》好看吗？",
    "《哪吒之魔童降世》的导演是谁？", "《釜山行》是哪个国家的电影？", "《美丽人生》获得过什么奖？",
    "《海上钢琴师》的主演是谁？", "《头号玩家》是谁执导的？",
]  # fmt: skip


def build(data: Path = DATA) -> list[dict]:
    rows = []
    for line in (data / "convqa_zh_kdconv_film.jsonl").open(encoding="utf-8"):
        r = json.loads(line)
        if r["entity_in_question"]:
            rows.append(
                {
                    "id": f"in-{r['id']}",
                    "question": r["question"],
                    "expected_route": "grounded",
                    "gold_passage_ids": r["gold_passage_ids"],
                    "kind": "kdconv-in-kb",
                }
            )
    for line in (data / "rewrite_en_trec_cast_2019_2020.jsonl").open(encoding="utf-8"):
        r = json.loads(line)
        if not r["history"]:  # the opening question of a topic: standalone
            rows.append({"id": f"out-{r['id']}", "question": r["question"], "expected_route": "fallback",
                         "kind": "cast-en"})  # fmt: skip
    for kind, questions in (("zh-other", ZH_OTHER_SUBJECTS), ("small-talk", SMALL_TALK),
                            ("film-not-in-kb", FILMS_NOT_IN_KB)):  # fmt: skip
        rows += [
            {"id": f"out-{kind}-{i}", "question": q, "expected_route": "fallback", "kind": kind}
            for i, q in enumerate(questions)
        ]
    return rows


ISSUE_EXAMPLES = ["怎么烤面包？"]
NILE_HISTORY = ["尼罗河是什么？", "尼罗河是非洲的一条大河，全长约6650公里，向北流入地中海。"]
NILE_FOLLOW_UPS = [
    "它流经哪些国家？", "它有多长？", "它的源头在哪里？", "它最后流入哪里？", "那它的流域面积有多大？",
    "沿岸有哪些国家？", "它为什么会定期泛滥？", "它对古埃及有什么意义？",
]  # fmt: skip


def _standalone_su(data: Path, n: int = 100, seed: int = 7) -> list[str]:
    rows = [json.loads(line) for line in (data / "rewrite_zh_su2019_dev.jsonl").open(encoding="utf-8")]
    questions = [r["question"] for r in rows if r.get("needs_rewrite") is False]
    random.Random(seed).shuffle(questions)
    return questions[:n]


def _negatives(data: Path, chinese_only: bool = False) -> list[tuple[str, str]]:
    groups = [("issue", ISSUE_EXAMPLES), ("zh-other", ZH_OTHER_SUBJECTS), ("small-talk", SMALL_TALK),
              ("su-standalone", _standalone_su(data))]  # fmt: skip
    if not chinese_only:
        groups.append(("film-not-in-kb", FILMS_NOT_IN_KB))
        cast = [json.loads(line) for line in (data / "rewrite_en_trec_cast_2019_2020.jsonl").open(encoding="utf-8")]
        groups.append(("cast-en", [r["question"] for r in cast if not r["history"]]))
    return [(kind, q) for kind, questions in groups for q in questions]


def build_after_topic(data: Path = DATA) -> list[dict]:
    """KdConv follow-ups (grounded) and the out-of-KB questions after a KdConv conversation (fallback)."""
    follow_ups = []
    for line in (data / "convqa_zh_kdconv_film.jsonl").open(encoding="utf-8"):
        r = json.loads(line)
        if not r["entity_in_question"]:
            follow_ups.append(r)
    rows = [
        {"id": f"follow-{r['id']}", "question": r["question"], "history": r["history"],
         "history_roles": r["history_roles"], "expected_route": "grounded", "gold_passage_ids": r["gold_passage_ids"],
         "kind": "kdconv-follow-up"}
        for r in follow_ups
    ]  # fmt: skip
    for i, (kind, question) in enumerate(_negatives(data)):
        before = follow_ups[(i * 7) % len(follow_ups)]  # a deterministic spread over the conversations
        rows.append(
            {"id": f"after-film-{kind}-{i}", "question": question, "history": before["history"],
             "history_roles": before["history_roles"], "expected_route": "fallback", "kind": f"after-film:{kind}"}
        )  # fmt: skip
    return rows


def build_after_nile(data: Path = DATA) -> list[dict]:
    """Nile follow-ups (grounded) and Chinese questions on other subjects after the Nile (fallback),
    for the bundled knowledge base (its 长江 document answers "长江有多长？", so that one is left out)."""
    history, roles = NILE_HISTORY, ["user", "assistant"]
    rows = [
        {"id": f"nile-follow-{i}", "question": q, "history": history, "history_roles": roles,
         "expected_route": "grounded", "kind": "nile-follow-up"}
        for i, q in enumerate(NILE_FOLLOW_UPS)
    ]  # fmt: skip
    negatives = [(kind, q) for kind, q in _negatives(data, chinese_only=True) if "长江" not in q]
    rows += [
        {"id": f"after-nile-{kind}-{i}", "question": q, "history": history, "history_roles": roles,
         "expected_route": "fallback", "kind": f"after-nile:{kind}"}
        for i, (kind, q) in enumerate(negatives)
    ]  # fmt: skip
    return rows


def main() -> None:
    args = sys.argv[1:]
    mode = args.pop(0) if args and args[0] in ("--after-topic", "--after-nile") else None
    if len(args) != 1:
        sys.exit(f"usage: python {sys.argv[0]} [--after-topic | --after-nile] OUT.jsonl")
    if not DATA.is_dir():
        sys.exit(f"missing {DATA}: the development data lives in ../shared/data")
    rows = {"--after-topic": build_after_topic, "--after-nile": build_after_nile}.get(mode, build)()
    Path(args[0]).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    kinds = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    print(f"wrote {len(rows)} rows to {args[0]}: {kinds}")


if __name__ == "__main__":
    main()
