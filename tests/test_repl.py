"""``ragbot chat``: through a pseudo-terminal as a user types (prompt_toolkit), and in-process with
lines on stdin (plain ``input()``, the same loop), with the fake model."""

import pexpect
import pytest

from helpers import run_cli, spawn_chat


@pytest.mark.slow
def test_chat_streams_answers_shows_sources_label_and_commands(chat_env):
    child = spawn_chat(chat_env, "--session", "demo")
    child.sendline("尼罗河是什么？")
    child.expect(r"You asked: 尼罗河是什么？ \[1\]")
    child.expect(r"Sources:\s+\[1\] 尼罗河 - .*nile\.md \(score 0\.\d+\)")
    child.sendline("怎么烤面包？")
    child.expect("知识库中没有找到相关内容，以下是通用回答")
    child.sendline("/why")
    child.expect("standalone question: 怎么烤面包？")
    child.expect(r"route:\s+fallback \(threshold 0\.350\)")
    child.sendline("/history")
    child.expect("you: 尼罗河是什么？")
    child.sendline("/sources")
    child.expect("The last answer cited no sources.")
    child.sendline("/nope")
    child.expect("Unknown command /nope")
    child.sendline("   ")
    child.send("\x04")  # Ctrl-D at the prompt leaves
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_resumes_a_named_session_and_reset_clears_it(chat_env):
    first = run_cli("chat", "--session", "trip", input="尼罗河是什么？\n", env=chat_env)
    assert first.returncode == 0 and "Sources:" in first.stdout, first.stderr
    again = run_cli("chat", "--session", "trip", input="我刚才问了什么？\n/reset\n/history\n/quit\n", env=chat_env)
    assert again.returncode == 0, again.stderr
    shown = again.stdout
    assert "Resumed with 1 earlier turn" in shown
    assert "你刚才问的是：“尼罗河是什么？”" in shown
    assert shown.index("Conversation reset.") < shown.index("(empty)")
    third = run_cli("chat", "--session", "trip", input="/history\n", env=chat_env)
    assert "Resumed" not in third.stdout and "(empty)" in third.stdout


def test_errors_keep_the_session_going(chat_env):
    out = run_cli("chat", input="问" * 5000 + "\n尼罗河是什么？\n/quit\n", env=chat_env)
    assert out.returncode == 0, out.stderr
    error = "error: the question is 5,000 characters long"
    assert error in out.stdout and "[1]" in out.stdout.split(error)[1]  # the next question is answered


def test_ctrl_c_stops_the_answer_not_the_session():
    from ragbot.cli.repl import run_chat
    from ragbot.conversation.turn import Answer

    class SlowConversation:
        """Streams forever until interrupted, like a long answer."""

        name, history, last = None, [], None

        def stream(self, question):
            yield "正在回答"
            raise KeyboardInterrupt

        def warm_up(self):
            return None

    inputs = iter(["尼罗河是什么？", "/quit"])
    import builtins
    import io

    out = io.StringIO()
    original = builtins.input
    builtins.input = lambda prompt="": next(inputs)
    try:
        assert run_chat(SlowConversation(), out) == 0
    finally:
        builtins.input = original
    assert "正在回答\n[stopped; this turn was not saved]" in out.getvalue()
    assert Answer  # the real stream ends with an Answer; this one never gets there
