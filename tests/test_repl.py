"""``ragbot chat`` driven through a pseudo-terminal, as a user types, with the fake model."""

import sys

import pexpect


def spawn(env, *args):
    child = pexpect.spawn(
        sys.executable, ["-m", "ragbot", "chat", *args], env=env, encoding="utf-8", timeout=60, dimensions=(40, 200)
    )
    child.expect("/help for commands")
    return child


def test_chat_streams_answers_shows_sources_label_and_commands(chat_env):
    child = spawn(chat_env, "--session", "demo")
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
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_resumes_a_named_session_and_reset_clears_it(chat_env):
    child = spawn(chat_env, "--session", "trip")
    child.sendline("尼罗河是什么？")
    child.expect(r"Sources:[\s\S]*?\(score [\s\S]*?>")
    child.send("\x04")  # Ctrl-D at the prompt leaves
    child.expect(pexpect.EOF)
    child = spawn(chat_env, "--session", "trip")
    child.expect("Resumed with 1 earlier turn")
    child.sendline("我刚才问了什么？")
    child.expect("你刚才问的是：“尼罗河是什么？”")
    child.sendline("/reset")
    child.expect("Conversation reset.")
    child.sendline("/history")
    child.expect(r"\(empty\)")
    child.sendline("/quit")
    child.expect(pexpect.EOF)


def test_errors_keep_the_session_going(chat_env):
    child = spawn(chat_env)
    child.sendline("问" * 5000)
    child.expect("error: the question is 5,000 characters long")
    child.sendline("尼罗河是什么？")
    child.expect(r"\[1\]")
    child.sendline("/quit")
    child.expect(pexpect.EOF)


def test_ctrl_c_stops_the_answer_not_the_session(chat_env, tmp_path):
    from ragbot.bot import Answer
    from ragbot.repl import run_chat

    class SlowConversation:
        """Streams forever until interrupted, like a long answer."""

        name, history, last = None, [], None

        def stream(self, question):
            yield "正在回答"
            raise KeyboardInterrupt

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
