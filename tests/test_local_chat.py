"""The product as a new user meets it: ``ragbot chat`` with no API key, the default local model
(Qwen2.5-1.5B from registry packages) and the bundled knowledge base. Slow: ~3 minutes."""

import os
import sys

import pexpect
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_nile_follow_up_is_resolved_grounded_and_cited_then_bread_falls_back():
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update({"PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"})
    child = pexpect.spawn(
        sys.executable, ["-m", "ragbot", "chat"], env=env, encoding="utf-8", timeout=600, dimensions=(50, 220)
    )
    child.expect("/help for commands")
    child.sendline("尼罗河是什么？")
    child.expect(r"Sources:\s+\[1\] 尼罗河")
    child.sendline("它流经哪些国家？")
    child.expect(r"Sources:\s+\[1\] 尼罗河.*nile-zh\.md")
    child.sendline("/why")
    child.expect(r"standalone question: (.*)\r?\n")
    standalone = child.match.group(1)
    assert "尼罗河" in standalone and "国家" in standalone
    child.expect(r"route:\s+grounded")
    child.sendline("怎么烤面包？")
    child.expect("知识库中没有找到相关内容，以下是通用回答", timeout=600)
    child.expect(r"\n[\s\S]*?>")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
