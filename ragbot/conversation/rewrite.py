"""Rewrite a follow-up question into a standalone one, resolving pronouns and omissions.

Three parts, each usable on its own:

* ``needs_rewrite`` - a cheap check (no model call) for anaphora and ellipsis: first turns
  and questions that already name their subject skip the model entirely.
* the chain-of-thought prompt (``prompts/rewrite.zh.txt`` / ``rewrite.en.txt``): the model
  reasons about what each pronoun or omitted word refers to, then writes ``改写：...`` /
  ``Rewrite: ...``; ``parse_rewrite`` keeps only that final question.
* guards: if the model fails, times out, returns something unparseable, introduces a name
  found neither in the history nor in the question, repeats an earlier question of the
  history, pastes a sentence of it, or leaves out most of the question's own words, the original question is used
  (a rewrite that adds nothing to the question keeps it as typed, too).
* the referent: when the Chinese reasoning resolves a pronoun of the question to a name from
  the history ("“他”指前面说的林伟彬"), the standalone question is the question with that
  substitution and nothing else changed. A small model often reasons right and then copies
  the question unchanged, or rewords it; people rewrite by substitution. An English
  comparison follow-up the model left as it was ("And the Yangtze?") gets the previous
  question's predicate ("How long is the Yangtze?").

The model sees the most recent messages first within its own budget (``history_tokens``,
each message clipped to ``message_tokens``): the latest mention of what a follow-up points
back to matters, and a long answer earlier on only distracts a small model.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ragbot.conversation.history import recent_messages
from ragbot.conversation.prompts import load_prompt
from ragbot.conversation.rewrite_examples import RewriteExample, format_examples, load_bank, select_examples
from ragbot.errors import ModelError, PromptError
from ragbot.models.chat import ChatModel, GenerationSettings, Message, Usage
from ragbot.text import CJK, is_chinese

log = logging.getLogger("ragbot.conversation.rewrite")

ZH_PRONOUN = re.compile(
    r"它|他|她|这个|那个|这些|那些|这里|那里|这儿|那儿|这位|那位|这部|那部|这首|那首|这本|那本|这家|那家"
    r"|这款|那款|这种|那种|这件|那件|这条|那条|这座|那座|这只|那只|该|其|此|前者|后者|上面|上述|刚才|同样|对方"
    r"|这|那(?!么)"  # bare demonstratives: 这是哪年拍的? 这片子... (after the longer forms, for the log)
)
# An attribute asked about without saying whose ("导演是谁？", "票房怎么样？"): in a follow-up the
# owner is almost always the topic of the history. Unless the question names something itself.
_ZH_ATTRIBUTE = re.compile(
    r"主演|导演|编剧|票房|上映|剧情|类型|出品|发行|制片|拍摄|演员|作者|出生|年龄|多大|身高|国籍|首都|人口|面积"
    r"|成立|创始人|总部|价格|多少钱|生日|代表作|作品|妻子|丈夫|老婆|老公|父母|成员|毕业|职业|配音|片长|语言|对白"
    r"|奖项|别名|原名|地址|电话|营业|门票|评价|口碑|评分|女主|男主|主角|配角|讲述|讲的|讲什么|获奖|得奖|星座"
    r"|去世|时长|多长|哪里看|哪看|结局|续集|原著|改编|风格|经营|背景|故事|制作"
    r"|开放时间|营业时间|建成|海拔|票价|作词|作曲|演唱|专辑"  # places and songs (KdConv travel, music)
)
_ZH_NAMED = re.compile(r"[《“「\"]|[A-Z][a-z]+")
_ZH_COMPARISON = re.compile(r"^(那|那么|还有)|呢[？?！!。]*$")
EN_PRONOUN = re.compile(
    r"\b(it|its|it's|he|him|his|she|her|hers|they|them|their|theirs|this|that|these|those|there|"
    r"the same|the other|the latter|the former|one|ones|then|other|another|similar|such|more|"
    r"(?-i:the (?!(?:best|most|least|first|last|world)\b)[a-z]+))\b",
    re.IGNORECASE,
)
_EN_FOLLOW_UP = re.compile(
    r"^(what about|how about|and|also|what else|why|why not|how so|anything else|tell me more|more)\b",
    re.IGNORECASE,
)
_ZH_SMALL_TALK = re.compile(r"^(你好|您好|谢谢|多谢|再见|好的|嗯|哈哈|早上好|晚安)[啊呀吧了！!。~～]*$")
_EN_SMALL_TALK = re.compile(r"^(hi|hello|hey|thanks|thank you|bye|goodbye|ok|okay)\b[!. ]*$", re.IGNORECASE)
_ANSWER_LINE = re.compile(
    r"^\s*(?:\**)(改写|改写后的问题|rewrite|rewritten question|final question)(?:\**)\s*[:：]\s*(.+)$",
    re.IGNORECASE | re.MULTILINE,
)
_REASONING = re.compile(r"^\s*(思考|推理|reasoning)\s*[:：]\s*(.+)$", re.IGNORECASE | re.MULTILINE)
# "“它”指前面说的尼罗河。" : the pronoun in quotes, then what it refers to
_REFERENT = re.compile(
    r"“(?P<pronoun>[^”]{1,3})”\s*(?:指的是|指)(?:前面说的|前面提到的|的是)?\s*(?P<referent>[^。，,；;！!？?]+)"
)
# pronouns a referent may replace, each only as a whole word: 他 not inside 他们 or 其他, 那 only as
# "那是..." (a leading 那 is "so": "那你知道...")
SUBSTITUTABLE = {
    **{p: rf"(?<!其){p}(?!们)" for p in "他她它"},
    **{p: p for p in ("他们", "她们", "它们", "这个", "那个", "这部", "那部", "这本", "那本", "这首", "那首")},
    **{p: p for p in ("这里", "那里", "这儿", "那儿")},
    "那": "那(?=是)",
}


@dataclass(frozen=True)
class RewriteDecision:
    needed: bool
    reason: str


def needs_rewrite(question: str, history: Sequence[str]) -> RewriteDecision:
    """Whether ``question`` probably depends on ``history`` (pronoun, omission, comparison)."""
    q = question.strip()
    if not history:
        return RewriteDecision(False, "first turn")
    if is_chinese(q):
        if _ZH_SMALL_TALK.match(q):
            return RewriteDecision(False, "small talk")
        if m := ZH_PRONOUN.search(q):
            return RewriteDecision(True, f"pronoun {m.group(0)!r}")
        if _ZH_COMPARISON.search(q):
            return RewriteDecision(True, "comparison follow-up")
        if len(CJK.findall(q)) <= 6:
            return RewriteDecision(True, "short question, subject probably omitted")
        if owner := _ownerless_attribute(q):
            return RewriteDecision(True, f"asks about {owner!r} without naming whose")
        return RewriteDecision(False, "names its subject")
    if _EN_SMALL_TALK.match(q):
        return RewriteDecision(False, "small talk")
    if m := EN_PRONOUN.search(q):
        return RewriteDecision(True, f"pronoun {m.group(0)!r}")
    if _EN_FOLLOW_UP.match(q):
        return RewriteDecision(True, "follow-up phrase")
    if len(q.split()) <= 3:
        return RewriteDecision(True, "short question, subject probably omitted")
    return RewriteDecision(False, "names its subject")


def _ownerless_attribute(question: str) -> str | None:
    """The attribute a Chinese question asks about without naming whose, if any: the clause
    that asks it ("知道影片编剧是谁吗") names no title or proper name, even when an earlier
    clause does ("出品公司是Les Films Corona，知道影片编剧是谁吗？")."""
    for clause in re.split(r"[，,。；;！!？?]", question):
        if (m := _ZH_ATTRIBUTE.search(clause)) and not _ZH_NAMED.search(clause):
            return m.group(0)
    return None


def parse_rewrite(text: str) -> tuple[str, str] | None:
    """(reasoning, final question) from the model's output, or None if it has no final line."""
    matches = list(_ANSWER_LINE.finditer(text))
    if not matches:
        # Small models sometimes answer with the rewritten question alone: one line, no label.
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        label = r"^\W*(改写|思考|推理|rewrite|reasoning)\W*[:：]"
        labelled = re.match(label, lines[0], re.IGNORECASE) if lines else None
        if len(lines) == 1 and not labelled and len(lines[0]) <= 300:
            return "", lines[0].strip("\"'“”‘’「」*` ")
        return None
    final = matches[-1].group(2).strip().strip("\"'“”‘’「」*` ")
    if not final:
        return None
    reasoning = text[: matches[-1].start()].strip()
    if r := _REASONING.search(reasoning):
        reasoning = reasoning[r.start(2) :].strip()
    return reasoning, final


ZH_FUNCTION_CHARS = set(
    "是的了吗呢吧啊呀么什哪里谁怎样如何几多少为在有和与及或被把"  # question words, particles
    "对于从到也都还就又很最更些个这那其们能会可以要想请问知道"  # prepositions, adverbs, modal verbs
)
_EN_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|\d[\d.,]*")


def history_referent(reasoning: str, history: Sequence[str]) -> tuple[str, str] | None:
    """(pronoun, referent) the reasoning resolved ("“它”指前面说的尼罗河。"), when the referent is
    copied from the history (so nothing is invented) and short enough to be a name; else None."""
    m = _REFERENT.search(reasoning)
    if m is None:
        return None
    referent = m.group("referent").strip().strip("“”\"'「」 ")
    if not referent or len(referent) > 20 or referent not in "\n".join(history):
        return None
    return m.group("pronoun"), referent


def substitute_referent(question: str, reasoning: str, history: Sequence[str]) -> tuple[str, str] | None:
    """(the question with the pronoun the reasoning resolved replaced by its referent, how), or
    None. Only a referent copied from the history counts, so nothing is invented. On the Su et
    al. dev rows this alone takes exact match from 43.0% to 48.3% (``bench/rewrite_replay.py``)."""
    if (resolved := history_referent(reasoning, history)) is None:
        return None
    pronoun, referent = resolved
    pattern = SUBSTITUTABLE.get(pronoun)
    if pattern is None or referent in SUBSTITUTABLE:
        return None
    substituted, count = re.subn(pattern, referent, question)
    if not count:
        return None
    return substituted, f"{pronoun!r} -> {referent!r}, as the reasoning resolved it"


def owner_prefixed(question: str, candidate: str, reasoning: str, history: Sequence[str]) -> tuple[str, str] | None:
    """(the referent the reasoning resolved + "的" + the question, how) when the model named the owner
    of a Chinese question without a pronoun ("出生地呢？", "后来呢？") in its reasoning, then copied
    the question as its final line; else None. Only a referent copied from the history counts."""
    if candidate.strip() != question.strip() or not is_chinese(question) or ZH_PRONOUN.search(question):
        return None
    if (resolved := history_referent(reasoning, history)) is None or (referent := resolved[1]) in question:
        return None
    return f"{referent}的{question.strip()}", f"its owner {referent!r} from the reasoning, left out of the final line"


_REASONING_END = re.compile(r"[。，,；;！!？?\n]")


def settled_reasoning(text: str, question: str, history: Sequence[str]) -> str | None:
    """The reasoning of a partial rewrite output ``text``, if it already names a referent that
    ``substitute_referent`` puts into ``question`` (the rest of the output would not change the
    result); else None. Only text up to a sentence mark counts, so a referent is never cut short,
    and only before the final line starts."""
    ends = [m.end() for m in _REASONING_END.finditer(text)]
    if not ends or _ANSWER_LINE.search(text):
        return None
    head = text[: ends[-1]]
    label = _REASONING.search(head)
    if label is None:
        return None
    reasoning = head[label.start(2) :].strip()
    return reasoning if substitute_referent(question, reasoning, history) else None


def introduced_name(rewrite: str, question: str, history: Sequence[str]) -> str | None:
    """A name (or number) in ``rewrite`` found neither in the question nor in the history.

    Chinese: a character is accounted for when it is part of a 2-character piece that occurs
    in the context; two or more unaccounted characters in a row are a new word (a single one
    is allowed: a joining word such as 的 between two copied spans). English and numbers:
    capitalised words and numbers absent from the context, and any Latin word in the rewrite
    of a Chinese question (the human rewrites of Su et al. never add one).
    """
    context = question + "\n" + "\n".join(history)
    lowered = context.lower()
    for run in re.findall(r"[\u4e00-\u9fff·・]+", rewrite):  # the dot inside 阿米尔·汗 is part of the name
        covered = [False] * len(run)
        for i in range(len(run) - 1):
            if run[i : i + 2] in context:
                covered[i] = covered[i + 1] = True
        for match in re.finditer(r"F{2,}", "".join("T" if c else "F" for c in covered)):
            piece = run[match.start() : match.end()]
            if not set(piece) <= ZH_FUNCTION_CHARS:  # 是什么 / 哪些 are words of the question, not names
                return piece
    chinese = is_chinese(question)
    for position, word in enumerate(_EN_WORD.findall(rewrite)):
        # capitalised words inside the sentence are names; the first word is capitalised anyway.
        # In a Chinese question any Latin word is one ("制片地区在日本， remembers是哪年出品的吗？")
        is_name = (word[0].isupper() and position > 0 and word != "I") or word[0].isdigit() or chinese
        if is_name and word.lower() not in lowered and word.lower().rstrip("'s") not in lowered:
            return word
    return None


@dataclass
class RewriteResult:
    """The standalone question and how it was obtained (kept for ``/why`` and evaluation)."""

    question: str  # what retrieval uses
    original: str
    called_model: bool = False
    reason: str = ""  # why it was (not) rewritten, or why the model's rewrite was rejected
    reasoning: str = ""  # the model's chain of thought, never shown as the answer
    raw_output: str = ""
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return self.question != self.original


def format_history(history: Sequence[Message], chinese: bool) -> str:
    user, assistant = ("用户", "助手") if chinese else ("User", "Assistant")
    return "\n".join(
        f"{user if m.role == 'user' else assistant}：{m.content}"
        if chinese
        else f"{user if m.role == 'user' else assistant}: {m.content}"
        for m in history
        if m.role in ("user", "assistant")
    )


def rewrite_question(
    question: str,
    history: Sequence[Message],
    model: ChatModel,
    prompt_dir=None,
    generation: GenerationSettings | None = None,
    force: bool = False,
    *,
    history_tokens: int | None = None,
    message_tokens: int = 120,
    examples: Sequence[RewriteExample] | None = None,
    prompt: str = "rewrite",
) -> RewriteResult:
    """The standalone form of ``question``; the original when no rewrite is needed or possible.

    ``prompt``: the prompt files' name (``rewrite``: the chain-of-thought prompt; ``rewrite_trained``:
    history and question only, for a model trained to write the same two parts).

    ``history_tokens``: the model sees only the most recent messages within this budget (each
    clipped to ``message_tokens``). ``examples``: the bank to pick similar few-shot examples
    from (used when the prompt has ``${examples}``); None loads the bundled bank."""
    started = time.perf_counter()
    texts = [m.content for m in history]
    users = [m.content for m in history if m.role == "user"]
    decision = needs_rewrite(question, texts)
    if not force and not decision.needed:
        log.info("rewrite skipped (%s): %r", decision.reason, question)
        return RewriteResult(question, question, reason=f"skipped: {decision.reason}")
    if not history:
        return RewriteResult(question, question, reason="skipped: first turn")
    log.info("rewrite called (%s): %r", decision.reason, question)
    if history_tokens is not None:
        history = recent_messages(history, history_tokens, message_tokens) or list(history[-1:])
    chinese = is_chinese(question) or (not re.search(r"[A-Za-z]{3,}", question) and is_chinese(" ".join(texts)))
    template = load_prompt(f"{prompt}.{'zh' if chinese else 'en'}", prompt_dir)
    values = {"history": format_history(history, chinese), "question": question}
    if "examples" in template.variables:
        bank = load_bank(prompt_dir) if examples is None else examples
        chosen = select_examples(question, [m.content for m in history], "zh" if chinese else "en", bank)
        values["examples"] = format_examples(chosen, chinese)
    messages = template.render(**values)
    generation = generation or GenerationSettings(temperature=0.0, max_tokens=160)
    # once the reasoning names a referent the substitution uses, the final line would be discarded:
    # not generating it saves about 20 tokens on those turns
    generation = replace(generation, until=lambda text: settled_reasoning(text, question, texts) is not None)
    result = RewriteResult(question, question, called_model=True)
    try:
        completion = model.complete(messages, generation)
    except ModelError as exc:
        log.warning("rewrite model failed, using the question as typed: %s", exc)
        result.reason = f"model failed: {exc}"
        result.seconds = time.perf_counter() - started
        return _comparison_fallback(result, users)
    except PromptError:
        raise
    result.raw_output = completion.text
    result.usage = completion.usage
    result.seconds = time.perf_counter() - started
    parsed = parse_rewrite(completion.text)
    if parsed is None and (settled := settled_reasoning(completion.text, question, texts)) is not None:
        parsed = settled, question  # stopped after the reasoning: the substitution makes the question
    if parsed is None:
        result.reason = "unparseable model output"
        log.warning("rewrite output unparseable, using the question as typed: %r", completion.text[:200])
        return _comparison_fallback(result, users)
    result.reasoning, candidate = parsed
    result.question, result.reason = checked_candidate(
        question, candidate, result.reasoning, texts, users, decision.reason
    )
    return _comparison_fallback(result, users)


def checked_candidate(
    question: str, candidate: str, reasoning: str, history: Sequence[str], users: Sequence[str], why: str
) -> tuple[str, str]:
    """(the standalone question, why) for the model's final line ``candidate``: the referent
    substitution, then the guards; a rejected rewrite, or one that adds nothing, gives the
    question as typed. ``why``: why the model was asked. ``bench/rewrite_replay.py`` reuses this."""
    if substituted := substitute_referent(question, reasoning, history) or owner_prefixed(
        question, candidate, reasoning, history
    ):
        candidate, how = substituted
        why = f"{why}; {how}"
    if name := introduced_name(candidate, question, history):
        log.warning("rewrite %r rejected: invents %r", candidate, name)
        return question, f"rejected: introduces {name!r}, found neither in the history nor the question"
    if earlier := repeated_question(candidate, question, users):
        log.warning("rewrite %r rejected: repeats %r", candidate, earlier)
        return question, f"rejected: repeats the earlier question {earlier!r} instead of the new one"
    if drops_question(candidate, question):
        log.warning("rewrite %r rejected: it drops the words of %r", candidate, question)
        return question, "rejected: leaves out most words of the question (an earlier message copied?)"
    if pasted := pasted_sentence(candidate, question, history):
        log.warning("rewrite %r rejected: it pastes %r", candidate, pasted)
        return question, f"rejected: pastes the earlier sentence {pasted!r} into the question"
    if _content(candidate) <= _content(question):
        # it resolved nothing (dropped a particle, reworded): the question as typed says the same
        return question, f"{why}; the rewrite adds nothing to the question, kept as typed"
    return candidate, why


_EN_COMPARISON = re.compile(
    r"^\s*(?i:and|what about|how about)\s+(?P<subject>(?:the\s+)?[A-Z][^?.!,]{0,60}?)\s*[?.!]*\s*$"
)
# the subject of a question: its last capitalised phrase ("the Nile", "Canada", "the Statue of Liberty";
# an acronym is a measure, not part of the name: "the GDP of Germany" -> "Germany")
_EN_SUBJECT = re.compile(r"(?:\bthe\s+)?\b(?![A-Z]{2,}\b)[A-Z][\w'-]*(?:\s+(?:of\s+|and\s+)?[A-Z][\w'-]*)*")


def comparison_rewrite(question: str, user_questions: Sequence[str]) -> str | None:
    """ "And the Yangtze?" after "How long is the Nile?" -> "How long is the Yangtze?": the
    previous question with its subject (last capitalised phrase) swapped for the new one."""
    if not (m := _EN_COMPARISON.match(question)) or is_chinese(question):
        return None
    # the last real question: "And Jared?" after "What about Ivanka?" reuses the one before both
    previous = next((t for t in reversed(user_questions) if "?" in t and not _EN_COMPARISON.match(t)), None)
    if previous is None or is_chinese(previous):
        return None
    subjects = [s for s in _EN_SUBJECT.finditer(previous) if s.start() > 0]
    if not subjects:
        return None
    last = subjects[-1]
    new = m.group("subject").strip()
    return previous[: last.start()] + new + previous[last.end() :]


def _comparison_fallback(result: RewriteResult, user_questions: Sequence[str]) -> RewriteResult:
    """A comparison follow-up the model left unchanged (or failed on) gets the previous
    question's predicate: small models return "And the Yangtze?" as it is."""
    if result.changed:
        return result
    if built := comparison_rewrite(result.original, user_questions):
        result.question = built
        how = "comparison follow-up: the previous question with the new subject"
        result.reason = f"{result.reason}; {how}" if result.reason else how
    return result


def _letters(text: str) -> str:
    """``text`` without punctuation, spaces or case: what "word for word" compares."""
    return re.sub(r"[\W_]+", "", text).lower()


def _content(text: str) -> set[str]:
    """The words that carry a question's subject: Chinese characters other than function words
    and pronouns, English words other than stopwords."""
    lowered = text.lower()
    chars = {c for c in CJK.findall(lowered) if c not in ZH_FUNCTION_CHARS and c not in "它他她"}
    words = {w for w in re.findall(r"[a-z0-9]+", lowered) if w not in _EN_STOPWORDS}
    return chars | words


_EN_STOPWORDS = frozenset(
    "a an the and or of in on at to for with about is are was were be been do does did what which who whom "
    "whose how when where why can could would should will it its it's he she they them their this that these "
    "those there i me my you your we our tell know more".split()
)


def drops_question(candidate: str, question: str) -> bool:
    """Whether ``candidate`` keeps under half of the question's content words: a rewrite only
    replaces pronouns and adds what was left out, so this is an earlier message copied or an
    answer ("为了发烧而生" -> "小米手机怎么样"). Human rewrites of the dev sets pass it (99.9%
    of the Chinese, 98% of the English ones)."""
    new = _content(question)
    return len(new) >= 2 and len(new & _content(candidate)) * 2 < len(new)


_SENTENCE = re.compile(r"[^。！？!?]+[。！？!?]")
_UTTERANCE_END = re.compile(r"[吗呢吧啊么，,]\s*$")
MIN_PASTED = 8  # characters: shorter pieces are names or short phrases a rewrite may well copy


def pasted_sentence(candidate: str, question: str, history: Sequence[str]) -> str | None:
    """A whole sentence of an earlier message (at least ``MIN_PASTED`` characters, not in the
    question) that ``candidate`` carries: the model put part of the conversation in front of the
    question ("看过电影七武士吗？这是一部1954年上映的...导演是黑泽明，知道编剧是谁吗？") instead of
    resolving it. None of the 1,500 human rewrites of Su et al. does this."""
    for message in history:
        # a message without a sentence end counts when it is an utterance, not a name ("哈利·波特与魔法石")
        whole = [message] if _UTTERANCE_END.search(message) else []
        for sentence in _SENTENCE.findall(message) or whole:
            sentence = sentence.strip()
            if len(sentence) >= MIN_PASTED and sentence in candidate and sentence not in question:
                return sentence
    return None


def repeated_question(candidate: str, question: str, earlier: Sequence[str]) -> str | None:
    """The earlier user question of the history that ``candidate`` repeats (as typed, or resolved:
    it keeps every content word of it) while keeping under half of the new question's content,
    e.g. "尼罗河流经哪些国家？" for "怎么烤面包？" after the Nile; or that it copies word for word
    ("都有什么呀？" -> "看过真爱至上这部电影吗？"). None if it repeats nothing."""
    for text in reversed(earlier):
        if _letters(candidate) == _letters(text) != _letters(question):
            return text
    new = _content(question)
    kept = _content(candidate)
    if not new or len(new & kept) * 2 >= len(new):
        return None
    for text in reversed(earlier):
        words = _content(text)
        if words and words <= kept and words != new:
            return text
    return None
