"""``ragbot chat``: the interactive terminal chat, a thin loop over ``Conversation.stream``.

Line editing and history come from prompt_toolkit (when stdin is a terminal). Ctrl-C
while an answer streams stops that answer (the turn is not saved) and the session goes
on; Ctrl-D or /quit leaves. Errors are printed on one line and the session goes on. A named
session's file is checked before each question: if it cannot be written the error is printed
and the chat goes on unsaved (saying so), so no turn is lost without a word; a database that is away
(PostgreSQL) keeps the session, and the question can be asked again once it is back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from ragbot.config import data_home
from ragbot.conversation.session import Conversation
from ragbot.conversation.turn import Answer
from ragbot.errors import ConversationStoreError, RagbotError, StoreUnavailableError
from ragbot.knowledge.knowledge_base import Hit, display_source

HELP = """Commands:
  /why      how the last answer was made: standalone question, rewrite reasoning, topic, hits, route
  /sources  the passages the last answer cited
  /history  the conversation so far
  /reset    forget the conversation and its topic (and delete them, for a named session)
  /good     mark the last answer good (kept with a named session, for fine-tuning data)
  /bad [corrected answer]
            mark the last answer bad, optionally with the answer it should have been
  /help     this help
  /quit     leave (Ctrl-D works too); Ctrl-C stops an answer that is streaming"""
UNSAVED = "[this chat goes on without saving: its turns are kept in memory only until you leave]"
AWAY = "[not asked: the session is kept; ask again once the database is back]"


def _reader() -> Callable[[str], str]:
    """A line reader: prompt_toolkit with history on a terminal, plain input() otherwise."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory

        path = data_home() / "chat_history.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        session = PromptSession(history=FileHistory(str(path)))
        return session.prompt
    return input


def format_sources(answer: Answer) -> str:
    """One line per document, with the numbers its passages were cited by and its best score:
    "  [1][3] 尼罗河 - knowledge/nile-zh.md (score 0.912)"."""
    documents: dict[tuple[str, str], list[tuple[int, Hit]]] = {}
    for n, hit in enumerate(answer.sources, start=1):
        documents.setdefault((hit.doc_id or "", hit.source), []).append((n, hit))
    lines = []
    for cited in documents.values():
        numbers = "".join(f"[{n}]" for n, _ in cited)
        first, best = cited[0][1], max(h.score for _, h in cited)
        lines.append(f"  {numbers} {first.title} - {display_source(first.source)} (score {best:.3f})")
    return "\n".join(lines)


def format_why(answer: Answer | None) -> str:
    if answer is None:
        return "Nothing asked yet."
    lines = [
        f"question:            {answer.question}",
        f"standalone question: {answer.standalone_question}",
    ]
    if answer.rewrite is not None:
        lines.append(
            f"rewrite:             {'model called' if answer.rewrite.called_model else 'no model call'}"
            f" ({answer.rewrite.reason})"
        )
        if answer.rewrite.reasoning:
            lines.append(f"rewrite reasoning:   {answer.rewrite.reasoning}")
    lines.append(
        f"route:               {answer.route}"
        + (f" (threshold {answer.threshold:.3f})" if answer.threshold is not None else "")
        + (f": {answer.route_reason}" if answer.route_reason else "")
    )
    if (t := answer.translation) is not None and t.text:
        found = "the answer was found through it" if t.grounded else "searched too, nothing confident"
        lines.append(f"translated ({t.language}):     {t.text} ({found if t.searched else t.reason})")
    elif t is not None:
        lines.append(f"translation:         none ({t.reason})")
    lines.append(f"topic:               {answer.topic.describe()}")
    if answer.topic_query:
        lines.append(f"topic query:         {answer.topic_query} (fused with the standalone question)")
    if answer.topic_reason:
        lines.append(f"topic in retrieval:  {answer.topic_reason}")
    for rank, h in enumerate(answer.hits, start=1):
        mark = "above" if h.above_threshold else "below"
        lines.append(f"  {rank}. {h.score:.3f} {mark}  {h.title} - {display_source(h.source)}")
    if answer.models:
        lines.append("models:              " + ", ".join(f"{stage} {name}" for stage, name in answer.models.items()))
    if answer.timings:
        lines.append("timings (s):         " + ", ".join(f"{k} {v:.2f}" for k, v in answer.timings.items()))
    if answer.usage:
        lines.append(
            "tokens:              "
            + ", ".join(
                f"{stage} {u.prompt_tokens}+{u.completion_tokens}" for stage, u in answer.usage.items() if u.calls
            )
        )
    return "\n".join(lines)


def mark_last_answer(conversation: Conversation, rating: str, correction: str = "") -> str:
    """Mark the last answer and say what was recorded (and whether it was saved)."""
    if not conversation.history:
        return "Nothing to mark yet: ask a question first."
    try:
        marked = conversation.feedback(rating, correction or None)
    except RagbotError as exc:
        return f"error: {exc}"
    turn = len(conversation.history) // 2
    what = f"Marked answer {turn} as {marked.rating}" + (" with your correction" if marked.correction else "")
    if conversation.name:
        return f"{what} (saved in session '{conversation.name}')."
    return f"{what} (kept in memory only: this chat is not saved; use --session NAME to keep feedback)."


def run_chat(conversation: Conversation, out=None) -> int:
    out = out or sys.stdout
    read = _reader()

    def say(text: str = "", end: str = "\n") -> None:
        out.write(text + end)
        out.flush()

    saved = f"session '{conversation.name}'" if conversation.name else "not saved; use --session NAME to keep it"
    say(f"ragbot chat ({saved}). /help for commands, Ctrl-D to leave.")
    if conversation.history:
        say(f"Resumed with {len(conversation.history) // 2} earlier turn(s).")
    conversation.warm_up()  # the local model computes the prompts' static parts while the user types
    while True:
        try:
            line = read("> ")
        except EOFError:
            say()
            return 0
        except KeyboardInterrupt:
            continue  # Ctrl-C at the prompt just clears the line
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command = line.split()[0].lower()
            if command in ("/quit", "/exit", "/q"):
                return 0
            if command == "/help":
                say(HELP)
            elif command == "/why":
                say(format_why(conversation.last))
            elif command == "/sources":
                last = conversation.last
                say(format_sources(last) if last and last.sources else "The last answer cited no sources.")
            elif command == "/history":
                for m in conversation.history:
                    say(f"{'you' if m.role == 'user' else 'bot'}: {m.content}")
                if not conversation.history:
                    say("(empty)")
            elif command == "/reset":
                try:
                    conversation.reset()
                    say("Conversation reset.")
                except RagbotError as exc:
                    say(f"error: {exc}")
            elif command in ("/good", "/bad"):
                say(mark_last_answer(conversation, command[1:], line[len(command) :].strip()))
            else:
                say(f"Unknown command {command}; /help lists the commands.")
            continue
        if conversation.name:
            try:
                notice = conversation.check_storage()
                if notice:
                    say(notice)
            except StoreUnavailableError as exc:  # a database that is away comes back: wait for it
                say(f"error: {exc}\n{AWAY}")
                continue
            except ConversationStoreError as exc:
                say(f"error: {exc}")
                conversation.keep_in_memory()
                say(UNSAVED)
        stream = conversation.stream(line)
        try:
            for item in stream:
                if isinstance(item, Answer):
                    say()
                    if item.route == "grounded" and item.sources:
                        say("Sources:\n" + format_sources(item))
                else:
                    say(item, end="")
        except KeyboardInterrupt:
            stream.close()
            say("\n[stopped; this turn was not saved]")
        except StoreUnavailableError as exc:  # the answer came but the database went away
            say(f"\nerror: {exc}\n[this turn was not saved; the session is kept: ask again once the database is back]")
        except ConversationStoreError as exc:  # the answer came but could not be saved
            say(f"\nerror: {exc}")
            conversation.keep_in_memory()
            say("[this turn was not saved] " + UNSAVED)
        except RagbotError as exc:
            say(f"\nerror: {exc}")
