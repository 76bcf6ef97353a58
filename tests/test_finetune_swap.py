"""``ragbot finetune use``: the config edit, and the next ``ask`` / ``eval`` answering with the new model.

Remote: a job run on ``ragbot.testing.fake_finetune_server`` (real HTTP on 127.0.0.1), then ``ragbot ask
--json`` against the same server. Local: the answer role swapped to another GGUF file (SmolLM2-135M
under a new name stands in for a user's fine-tuned, converted model) and run by llama.cpp.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragbot.config import load_settings
from ragbot.conversation.bot import RagBot
from ragbot.errors import FinetuneError, ModelError
from ragbot.finetune.jobs import FineTuningJobs
from ragbot.finetune.swap import use_model
from ragbot.models.chat import make_chat_model
from ragbot.testing.fake_finetune_server import FakeFineTuningServer

from helpers import run_cli
from llama_server import local_models_dir  # noqa: F401

USER_CONFIG = """\
# my ragbot settings
embedder = "hash"  # instant, for tests
top_k = 3

# the endpoint
base_url = "{base_url}"
"""


@pytest.fixture(autouse=True)
def no_api_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
def api():
    with FakeFineTuningServer(steps_per_poll=16) as server:
        yield server


@pytest.fixture
def trained(api, tmp_path) -> tuple[FineTuningJobs, str, str]:
    """(jobs, job id, fine-tuned model) of a job that succeeded on the fake server."""
    train = tmp_path / "train.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(10)
    ]
    train.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    jobs = FineTuningJobs(api.base_url, poll_seconds=0, max_retries=0)
    record = jobs.follow(jobs.create(train, "gpt-4o-mini", suffix="kb").id)
    return jobs, record.id, record.fine_tuned_model


def fake_gguf(path: Path) -> Path:
    """A file that passes the GGUF magic check (enough for config edits; never loaded)."""
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


# --- the config edit -----------------------------------------------------------------------------


def test_use_a_job_writes_its_model_keeping_the_users_keys_and_comments(api, trained, tmp_path):
    jobs, job_id, model = trained
    config = tmp_path / "ragbot.toml"
    config.write_text(USER_CONFIG.format(base_url=api.base_url))

    change = use_model(job_id, role="answer", jobs=jobs)

    assert change.model == model and change.job_id == job_id and change.warnings == []
    text = config.read_text()
    assert text.startswith(USER_CONFIG.format(base_url=api.base_url))  # comments and keys untouched
    assert f'answer_model = "{model}"' in text
    settings = load_settings()
    assert settings.answer_model == model and settings.rewrite_model is None and settings.top_k == 3

    use_model(job_id, role="rewrite", jobs=jobs)
    assert load_settings().rewrite_model == model

    back = use_model(None, role="answer", unset=True)
    assert back.removed == ["answer_model"]
    assert load_settings().answer_model is None and load_settings().rewrite_model == model
    assert "# the endpoint" in config.read_text()


def test_use_creates_the_config_file_and_honours_config(trained, tmp_path):
    jobs, job_id, model = trained
    use_model(job_id, jobs=jobs)
    assert load_settings(tmp_path / "ragbot.toml").answer_model == model
    other = tmp_path / "conf" / "prod.toml"
    result = run_cli("--config", str(other), "finetune", "use", model, "--role", "rewrite")
    assert result.returncode == 0, result.stderr
    assert f"The rewrite role now uses {model}; written to {other}." in result.stdout
    assert load_settings(other).rewrite_model == model
    other.write_text("top_k = 4\n" + other.read_text())
    result = run_cli("--config", str(other), "finetune", "use", model, "--role", "answer")
    assert result.returncode == 0, result.stderr
    assert load_settings(other).answer_model == model and load_settings(other).top_k == 4


def test_a_recorded_job_resolves_offline(api, trained, tmp_path):
    jobs, job_id, model = trained
    api.stop()
    assert use_model(job_id, jobs=FineTuningJobs(api.base_url, max_retries=0)).model == model


def test_use_a_job_that_has_not_succeeded_is_refused(api, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n' * 10)
    jobs = FineTuningJobs(api.base_url, poll_seconds=0, max_retries=0)
    running = jobs.create(train, "gpt-4o-mini")
    with pytest.raises(
        FinetuneError, match=rf"job {running.id} has no fine-tuned model: it is .*ragbot finetune follow"
    ):
        use_model(running.id, jobs=jobs)
    assert not (tmp_path / "ragbot.toml").exists()  # nothing written


def test_use_a_gguf_file_and_a_lora_adapter(tmp_path):
    model = fake_gguf(tmp_path / "my-finetune.gguf")
    adapter = write_lora_adapter(tmp_path / "adapter.gguf", scale=0.0)
    (tmp_path / "ragbot.toml").write_text('model = "smollm2-135m"\n')

    use_model(str(model), role="answer")
    use_model(None, lora=str(adapter))
    settings = load_settings()
    assert settings.answer_model == str(model.absolute()) and settings.lora_path == adapter.absolute()
    # The local answer model is built from the file, with the adapter handed to llama.cpp.
    answer = make_chat_model(settings, "answer")
    assert answer.name == "my-finetune.gguf+adapter.gguf" and answer.lora_path == str(adapter.absolute())
    assert make_chat_model(settings, "rewrite").lora_path is None

    back = use_model(None, role="answer", unset=True)
    assert sorted(back.removed) == ["answer_model", "lora_path"]
    assert load_settings().lora_path is None and load_settings().model == "smollm2-135m"


def test_a_rewriter_adapter_takes_the_rewrite_role_with_its_short_prompt(tmp_path):
    adapter = write_lora_adapter(tmp_path / "rewriter.gguf", scale=0.0)
    (tmp_path / "ragbot.toml").write_text('model = "smollm2-135m"\n')
    with pytest.raises(FinetuneError, match="is for llama models, but the local rewrite model qwen2.5-0.5b is qwen2"):
        use_model("qwen2.5-0.5b", role="rewrite", lora=str(adapter))
    change = use_model("smollm2-135m", role="rewrite", lora=str(adapter))
    assert "applies to the local rewrite model, with the rewrite_trained prompt" in change.describe()
    settings = load_settings()
    assert (settings.rewrite_model, settings.rewrite_lora_path, settings.rewrite_prompt) == (
        "smollm2-135m",
        adapter.absolute(),
        "rewrite_trained",
    )
    assert settings.rewrite_history_tokens == 300
    # each role names its own model and adapter; the answer role keeps the base model, without the adapter
    assert make_chat_model(settings, "rewrite").name == "smollm2-135m+rewriter.gguf"
    assert (make_chat_model(settings, "answer").name, settings.lora_path) == ("smollm2-135m", None)
    back = use_model(None, role="rewrite", unset=True)
    assert set(back.removed) == {"rewrite_model", "rewrite_lora_path", "rewrite_prompt", "rewrite_history_tokens"}
    assert (load_settings().rewrite_prompt, load_settings().rewrite_history_tokens) == ("rewrite", 600)


def test_bad_swaps_say_what_is_wrong(tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("not a model")
    cases = [
        (("finetune", "use", str(tmp_path / "missing.gguf")), "missing.gguf does not exist"),
        (("finetune", "use", str(not_gguf)), "is not a GGUF file"),
        (("finetune", "use", "--lora", str(not_gguf), "--role", "rewrite"), "is not a GGUF file"),
        (("finetune", "use"), "give a job id, a model name or a .gguf file"),
        (("finetune", "use", "some-model", "--unset"), "--unset takes no model"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
    broken = tmp_path / "ragbot.toml"
    broken.write_text("top_k = [unclosed\n")
    result = run_cli("finetune", "use", "gpt-4o-mini")
    assert "is not valid TOML" in result.stderr and result.returncode == 1
    assert broken.read_text() == "top_k = [unclosed\n"  # left as it was


def test_a_note_when_the_model_lives_at_another_endpoint(api, trained, tmp_path):
    jobs, job_id, _ = trained
    (tmp_path / "ragbot.toml").write_text('llm = "local"\n')
    change = use_model(job_id, jobs=jobs)
    assert any("llm = 'local'" in w for w in change.warnings)
    assert any(f'set base_url = "{api.base_url}"' in w for w in change.warnings)


# --- the next ask / eval uses it ------------------------------------------------------------------


def test_ask_answers_with_the_fine_tuned_model_after_use(api, trained, tmp_path):
    _, job_id, model = trained
    (tmp_path / "ragbot.toml").write_text(USER_CONFIG.format(base_url=api.base_url))

    swapped = run_cli("finetune", "use", job_id, "--role", "answer")
    assert swapped.returncode == 0, swapped.stderr
    assert f"The answer role now uses {model} (from job {job_id})" in swapped.stdout

    asked = run_cli("ask", "--json", "How long is the Nile?")
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert answer["models"]["answer"] == model
    assert answer["models"]["rewrite"] == "gpt-4o-mini"  # the other role is untouched
    assert answer["answer"].startswith(f"[{model}]")  # the fake server says who answered

    # The Python API (and so the chat and the HTTP API built on it) reads the same settings.
    assert RagBot.load(load_settings()).answer_model.name == model

    run_cli("finetune", "use", "--unset")
    again = json.loads(run_cli("ask", "--json", "How long is the Nile?").stdout)
    assert again["models"]["answer"] == "gpt-4o-mini"


def test_eval_runs_the_fine_tuned_model(api, trained, tmp_path):
    _, job_id, model = trained
    (tmp_path / "ragbot.toml").write_text(USER_CONFIG.format(base_url=api.base_url))
    questions = tmp_path / "questions.jsonl"
    rows = [{"id": "en-1", "question": "How long is the Nile?", "answer": "About 6,650 km."}]
    questions.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    base = run_cli("eval", str(questions), "--out", str(tmp_path / "base"), "--json")
    assert base.returncode == 0, base.stderr
    base_model = json.loads(base.stdout)["run"]["answer_model"]
    assert run_cli("finetune", "use", job_id).returncode == 0
    result = run_cli("eval", str(questions), "--out", str(tmp_path / "run"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["run"]["answer_model"] == model
    assert f"[{model}] A canned answer from the fake" in (tmp_path / "run" / "results.jsonl").read_text()
    # base vs fine-tuned on the same questions: the comparison names the models it compares
    compared = run_cli("eval", "--compare", str(tmp_path / "base"), str(tmp_path / "run"))
    assert compared.returncode == 0, compared.stderr
    assert f"| answer_model | {base_model} | {model} |" in compared.stdout
    assert "| answers.n | 1 | 1 | +0 |" in compared.stdout


def test_the_whole_loop_from_the_shipped_question_set(api, tmp_path):
    """prepare -> create --follow -> use -> ask, all from the command line."""
    questions = Path(__file__).resolve().parent.parent / "ragbot" / "data" / "qa_default_kb.jsonl"
    (tmp_path / "ragbot.toml").write_text(USER_CONFIG.format(base_url=api.base_url))
    prepared = run_cli("finetune", "prepare", str(questions), "--out", "out")
    assert prepared.returncode == 0, prepared.stderr
    created = run_cli("finetune", "create", "out/sft.train.jsonl", "--validation", "out/sft.valid.jsonl",
                      "--model", "gpt-4o-mini", "--suffix", "kb", "--follow", "--poll-seconds", "0")  # fmt: skip
    assert created.returncode == 0, created.stderr
    job_id = created.stdout.split()[2]
    model = api.jobs[job_id].fine_tuned_model
    assert f"Fine-tuned model: {model}" in created.stdout
    assert run_cli("finetune", "use", job_id).returncode == 0
    answer = json.loads(run_cli("ask", "--json", "长江有多长？").stdout)
    assert answer["models"]["answer"] == model


def test_a_legacy_completions_model_gets_a_note(trained, tmp_path):
    jobs, _, _ = trained
    (tmp_path / "ragbot.toml").write_text("")
    change = use_model("ft:babbage-002:org::abc123", jobs=jobs)
    assert any("completions model" in w for w in change.warnings)


# --- local backend: another GGUF file answers -------------------------------------------------------


@pytest.fixture
def unload_after():
    """Free the llama.cpp models a test loaded in this process (three copies with adapters)."""
    from ragbot.models.local import unload_models

    yield
    unload_models()


def test_local_answer_model_swapped_to_another_gguf_file(tmp_path, local_models_dir, unload_after):  # noqa: F811
    from ragbot.models.local_files import resolve_model_path

    base = resolve_model_path("smollm2-135m", models_dir=local_models_dir)
    finetuned = tmp_path / "ragbot-finetuned-smollm2.gguf"  # stands in for the user's converted fine-tune
    finetuned.symlink_to(base)
    (tmp_path / "ragbot.toml").write_text(
        'embedder = "hash"\nmodel = "smollm2-135m"\nnum_threads = 1\nmax_tokens = 16\ntemperature = 0.0\ntop_k = 1\n'
    )

    swapped = run_cli("finetune", "use", str(finetuned))
    assert swapped.returncode == 0, swapped.stderr
    asked = run_cli("ask", "--json", "What is the capital of France?")
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    # nothing found: the question was translated (by the rewrite model) and searched again before the answer
    assert answer["models"] == {
        "rewrite": "smollm2-135m",
        "translation": "smollm2-135m",
        "answer": "ragbot-finetuned-smollm2.gguf",
    }
    assert answer["answer"].strip()
    assert answer["usage"]["answer"]["completion_tokens"] > 0


def write_lora_adapter(path: Path, scale: float, arch: str = "llama", rank: int = 4, width: int = 576) -> Path:
    """A GGUF LoRA adapter on the query projections of SmolLM2-135M (30 blocks, width 576)."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for block in range(30):
        a = rng.standard_normal((rank, width)) * scale  # numpy (rank, in) is GGUF ne = [in, rank]
        b = rng.standard_normal((width, rank)) * scale
        writer.add_tensor(f"blk.{block}.attn_q.weight.lora_a", a.astype(np.float32))
        writer.add_tensor(f"blk.{block}.attn_q.weight.lora_b", b.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.slow
def test_lora_adapter_set_by_use_is_applied_by_llama_cpp(tmp_path, unload_after):
    from ragbot.models.chat import GenerationSettings, Message
    from ragbot.models.local import unload_models

    (tmp_path / "ragbot.toml").write_text('model = "smollm2-135m"\nnum_threads = 1\nn_ctx = 512\n')
    question = [Message("user", "What is the capital of France?")]
    greedy = GenerationSettings(temperature=0.0, max_tokens=12)

    def answer() -> str:
        """A cold answer from a freshly loaded model: greedy answers are compared like with like
        (a prompt llama.cpp kept can take other kernels, and a 135M model's greedy path can flip)."""
        unload_models()
        return make_chat_model(load_settings(), "answer").complete(question, greedy).text

    base = answer()
    use_model(None, lora=write_lora_adapter(tmp_path / "zero.gguf", scale=0.0))
    assert answer() == base  # an all-zero adapter changes nothing: same model, same greedy answer
    use_model(None, lora=write_lora_adapter(tmp_path / "random.gguf", scale=0.5))
    assert answer() != base  # llama.cpp applied the adapter's weights
    use_model(None, role="answer", unset=True)
    assert answer() == base


def test_an_adapter_for_another_model_or_a_whole_model_is_refused_as_lora(tmp_path, local_models_dir):  # noqa: F811
    # llama-cpp-python 0.3.36 misses llama.cpp's refusal of such an adapter and then crashes while
    # generating, so `use --lora` checks the GGUF header first.
    from ragbot.models.local_files import resolve_model_path

    (tmp_path / "ragbot.toml").write_text('model = "smollm2-135m"\n')
    qwen_adapter = write_lora_adapter(tmp_path / "qwen-adapter.gguf", scale=0.5, arch="qwen2")
    with pytest.raises(FinetuneError, match="is for qwen2 models, but the local answer model smollm2-135m is llama"):
        use_model(None, lora=qwen_adapter)
    whole_model = resolve_model_path("smollm2-135m", models_dir=local_models_dir)
    with pytest.raises(FinetuneError, match=r"is not a GGUF LoRA adapter \(general.type: model\)"):
        use_model(None, lora=whole_model)
    assert load_settings().lora_path is None


@pytest.mark.slow
def test_an_adapter_for_another_size_of_the_model_is_an_error_not_a_crash(tmp_path, unload_after):
    # Same architecture, other width: the header looks right; llama.cpp rejects it at load time.
    from ragbot.models.chat import Message

    (tmp_path / "ragbot.toml").write_text('model = "smollm2-135m"\nnum_threads = 1\nn_ctx = 512\n')
    use_model(None, lora=write_lora_adapter(tmp_path / "wide.gguf", scale=0.5, width=960))
    model = make_chat_model(load_settings(), "answer")
    with pytest.raises(ModelError, match="rejected the LoRA adapter .*wide.gguf"):
        model.complete([Message("user", "hi")])
