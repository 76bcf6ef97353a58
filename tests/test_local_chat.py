"""The product as a new user meets it: ``ragbot chat`` with no API key, the default local model
(Qwen2.5-1.5B from registry packages) and the bundled knowledge base. Slow: ~3 minutes."""

import os
import re
import sys

import pexpect
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PROMPT = "\x1b[?2004h"  # prompt_toolkit turns bracketed paste on each time it shows the prompt
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x08\r]")


def _until_prompt(child) -> str:
    """Everything the REPL printed up to the next prompt, without terminal codes."""
    child.expect_exact(PROMPT)
    return ANSI.sub("", child.before)


def test_nile_follow_up_is_resolved_grounded_and_cited_then_bread_falls_back():
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update({"PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"})
    child = pexpect.spawn(
        sys.executable, ["-m", "ragbot", "chat"], env=env, encoding="utf-8", timeout=600, dimensions=(50, 220)
    )
    child.expect("/help for commands")
    _until_prompt(child)

    child.sendline("尼罗河是什么？")
    first = _until_prompt(child)
    assert re.search(r"Sources:\s+\[1\](?:\[\d\])* 尼罗河", first), first

    child.sendline("它流经哪些国家？")
    second = _until_prompt(child)
    assert re.search(r"Sources:\s+\[1\](?:\[\d\])* 尼罗河.*nile-zh\.md", second), second

    child.sendline("/why")
    why = _until_prompt(child)
    standalone = re.search(r"standalone question: (.*)", why)
    assert standalone and "尼罗河" in standalone.group(1) and "国家" in standalone.group(1), why
    assert re.search(r"route:\s+grounded", why), why

    child.sendline("怎么烤面包？")
    bread = _until_prompt(child)
    assert "知识库中没有找到相关内容，以下是通用回答" in bread, bread
    assert "Sources:" not in bread, bread

    child.sendline("/quit")
    child.expect(pexpect.EOF)
