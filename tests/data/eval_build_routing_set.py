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
"""

from __future__ import annotations

import json
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


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} OUT.jsonl")
    if not DATA.is_dir():
        sys.exit(f"missing {DATA}: the development data lives in ../shared/data")
    rows = build()
    Path(sys.argv[1]).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    kinds = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    print(f"wrote {len(rows)} rows to {sys.argv[1]}: {kinds}")


if __name__ == "__main__":
    main()
