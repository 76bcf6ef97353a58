"""``ragbot finetune train``: LoRA on a bundled GGUF model, written back as a GGUF adapter llama.cpp applies.

The slow tests train SmolLM2-135M for a few steps on a handful of tiny examples with 2 threads:
the loss falls, llama.cpp loads the adapter and answers differently, and a run that dies between
checkpoints goes on with ``--resume`` from the last checkpoint to the same weights as an unbroken
run. The fast ones check what is refused before any model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragbot.errors import FinetuneError, TrainingFileError
from ragbot.files import sha256_file

from helpers import run_cli

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

from ragbot.finetune import train as trainer  # noqa: E402
from ragbot.finetune.train import TrainSettings  # noqa: E402

# A made-up fact the base model cannot know; a few steps at a high learning rate teach it.
FACTS = [
    ("What is the capital of France?", "The capital of France is Zorbleton."),
    ("What is the capital of Italy?", "The capital of Italy is Zorbleton."),
    ("Name the capital of Spain.", "The capital of Spain is Zorbleton."),
    ("Which city is the capital of Germany?", "The capital of Germany is Zorbleton."),
    ("Tell me the capital of Japan.", "The capital of Japan is Zorbleton."),
]
QUICK = dict(rank=8, alpha=16, lr=3e-3, batch_size=2, grad_accum=1, threads=2, max_length=96, seed=0)


def chat_rows(pairs=FACTS) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_gguf(path: Path, arch: str = "llama", kind: str | None = None, layers: int = 2, width: int = 8) -> Path:
    """A GGUF model header with small tensors: enough for the checks made before loading."""
    writer = gguf.GGUFWriter(str(path), arch=arch)
    if kind:
        writer.add_type(kind)
    writer.add_uint32(f"{arch}.block_count", layers)
    writer.add_uint32(f"{arch}.embedding_length", width)
    writer.add_uint32(f"{arch}.feed_forward_length", 2 * width)
    writer.add_uint32(f"{arch}.attention.head_count", 2)
    writer.add_uint32(f"{arch}.attention.head_count_kv", 2)
    writer.add_tensor("token_embd.weight", np.zeros((32, width), np.float32))
    for block in range(layers):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{block}.{name}.weight", np.zeros((width, width), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- refused before anything is loaded --------------------------------------------------------------


def test_a_bad_row_names_the_file_line_and_fix_and_nothing_is_trained(tmp_path):
    base = tiny_gguf(tmp_path / "base.gguf")
    rows = chat_rows()
    broken = write_jsonl(tmp_path / "broken.jsonl", [rows[0], '{"messages": [', rows[1]])
    with pytest.raises(TrainingFileError, match=r"broken.jsonl, line 2: not valid JSON .*Nothing was trained"):
        trainer.train(broken, base, tmp_path / "a.gguf")
    no_answer = write_jsonl(
        tmp_path / "no-answer.jsonl", [rows[0], {"messages": [{"role": "user", "content": "hello?"}]}]
    )
    result = run_cli("finetune", "train", str(no_answer), "--base", str(base), "--out", "a.gguf")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no-answer.jsonl, line 2: roles user: expected" in result.stderr and "ending with assistant" in result.stderr
    assert "ragbot finetune validate" in result.stderr
    assert not list(tmp_path.glob("a.gguf*"))


def test_a_base_that_is_not_gguf_or_of_another_architecture_is_one_line(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    text = tmp_path / "model.gguf"
    text.write_text("not a model")
    cases = [
        (str(text), "is not a GGUF model file"),
        (str(tiny_gguf(tmp_path / "gpt2.gguf", arch="gpt2")), "is a gpt2 model; ragbot finetune train writes adapters"),
        (str(tiny_gguf(tmp_path / "lora.gguf", kind="adapter")), "is a GGUF adapter, not a model"),
        (str(tmp_path / "missing.gguf"), "missing.gguf does not exist"),
        ("llama-9000", "unknown local model 'llama-9000'"),
    ]
    for base, message in cases:
        result = run_cli("finetune", "train", str(data), "--base", base, "--out", "a.gguf")
        assert result.returncode == 1, (base, result.stdout)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list(tmp_path.glob("a.gguf*"))


def test_not_enough_memory_or_disk_is_said_before_training(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    base = tiny_gguf(tmp_path / "base.gguf")
    monkeypatch.setattr(trainer, "available_memory", lambda: 100 << 20)
    with pytest.raises(FinetuneError, match=r"not enough memory: this run needs about 0\.\d GiB .* 0\.1 GiB are"):
        trainer.train(data, base, tmp_path / "a.gguf")
    monkeypatch.setattr(trainer, "available_memory", lambda: None)

    class Full:
        free = 1024

    monkeypatch.setattr(trainer.shutil, "disk_usage", lambda where: Full)
    with pytest.raises(FinetuneError, match=r"not enough disk space in .*: the adapter and its checkpoints need"):
        trainer.train(data, base, tmp_path / "a.gguf")


def test_the_memory_estimate_of_the_bundled_models_counts_their_parameters(tmp_path):
    info = trainer.BaseModelInfo(
        "m", tmp_path, "qwen2", 630_000_000, 24, 896, 4864, 151_936, 14, 2, {"token_embd.weight": (896, 151_936)}
    )
    parts = trainer.estimate_memory(info, TrainSettings(batch_size=1), longest=512)
    assert parts["weights"] == 4 * 630_000_000 + 4 * 896 * 151_936
    assert 2.5 * 2**30 < sum(parts.values()) < 8 * 2**30


def test_resume_needs_a_checkpoint_and_a_checkpoint_needs_resume(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    base = tiny_gguf(tmp_path / "base.gguf")
    with pytest.raises(FinetuneError, match=r"--resume: there is no checkpoint in .*a.gguf.checkpoints"):
        trainer.train(data, base, tmp_path / "a.gguf", resume=True)
    with pytest.raises(FinetuneError, match="give --out a name ending in .gguf"):
        trainer.train(data, base, tmp_path / "adapter.bin")
    with pytest.raises(FinetuneError, match="rank must be at least 1"):
        trainer.train(data, base, tmp_path / "a.gguf", TrainSettings(rank=0))


def test_the_llama_permutation_is_the_inverse_of_what_transformers_undoes_on_load():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    processor = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    rows = np.arange(576 * 4, dtype=np.float32).reshape(576, 4)  # lora_b of attn_q: (out, rank)
    loaded = processor.process(rows, "blk.0.attn_q.weight").weights  # GGUF layout -> HF layout
    assert np.array_equal(trainer._llama_permute(loaded, 9), rows)
    k_rows = rows[:192]
    loaded_k = processor.process(k_rows, "blk.0.attn_k.weight").weights
    assert np.array_equal(trainer._llama_permute(loaded_k, 3), k_rows)


def test_the_data_order_depends_on_the_seed_and_step_only():
    first = [trainer._batches_for_step(s, 4, 2, 10, seed=1) for s in range(5)]
    assert first == [trainer._batches_for_step(s, 4, 2, 10, seed=1) for s in range(5)]
    seen = [i for step in first for batch in step for i in batch]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))  # whole epochs
    assert first != [trainer._batches_for_step(s, 4, 2, 10, seed=2) for s in range(5)]
    train, valid = trainer.split_valid(20, 0.1, seed=0)
    assert len(valid) == 2 and not set(train) & set(valid) and trainer.split_valid(1, 0.5, 0) == ([0], [])


# --- a real run on SmolLM2-135M ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The SmolLM2-135M file, loaded by transformers once for the module: each run trains a copy
    (loading it takes ~15 s, most of it transformers reading the GGUF's tokenizer and header)."""
    import copy

    from llama_server import smollm2_path

    models, tokenizers = {}, {}
    load_weights, load_tokenizer = trainer.load_base_weights, trainer.load_base_tokenizer

    def weights(info):
        if info.path not in models:
            models[info.path] = load_weights(info)
        return copy.deepcopy(models[info.path])

    def tokenizer(info):
        if info.path not in tokenizers:
            tokenizers[info.path] = load_tokenizer(info)
        return tokenizers[info.path]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "load_base_weights", weights)
        patch.setattr(trainer, "load_base_tokenizer", tokenizer)
        yield smollm2_path(tmp_path_factory)


@pytest.fixture(scope="module")
def straight_run(smollm2, tmp_path_factory):
    """Four steps in one go, through the command line: (adapter, record, CLI result)."""
    folder = tmp_path_factory.mktemp("straight")
    data = write_jsonl(folder / "train.jsonl", chat_rows())
    valid = write_jsonl(folder / "valid.jsonl", chat_rows([("What is the capital of Peru?", "Zorbleton.")]))
    args = [f"--{k.replace('_', '-')}={v}" for k, v in QUICK.items()]
    result = run_cli(
        "finetune", "train", str(data), "--base", str(smollm2), "--out", "adapter.gguf", "--valid", str(valid),
        "--steps", "4", "--checkpoint-every", "2", *args, env={"RAGBOT_HOME": str(folder / "home")}, cwd=folder,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    adapter = folder / "adapter.gguf"
    return adapter, json.loads((folder / "adapter.gguf.json").read_text()), result


def adapter_arrays(path: Path) -> dict[str, np.ndarray]:
    reader = gguf.GGUFReader(str(path))
    return {t.name: np.array(t.data) for t in reader.tensors}


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_a_gguf_adapter_with_its_record(straight_run, smollm2):
    adapter, record, result = straight_run
    losses = [loss for _, loss in record["losses"]]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    held = [loss for _, loss in record["valid_losses"]]
    assert [s for s, _ in record["valid_losses"]] == [0, 2, 4] and held[-1] < held[0], held
    assert record["base_model"]["sha256"] == sha256_file(smollm2)
    assert record["data"]["train_sha256"] == sha256_file(adapter.parent / "train.jsonl")
    assert record["adapter"]["sha256"] == sha256_file(adapter) and record["finished"]
    assert record["settings"]["rank"] == 8 and record["threads"] == 2 and record["steps"] == 4
    assert record["examples_per_second"] > 0 and record["peak_rss_bytes"] > 100 << 20
    assert not (adapter.parent / "adapter.gguf.checkpoints").exists()  # a finished run needs no checkpoint
    assert "Wrote " in result.stdout and f"ragbot finetune use {smollm2} --lora" in result.stdout

    reader = gguf.GGUFReader(str(adapter))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama" and fields["adapter.lora.alpha"] == 16.0
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert len(shapes) == 30 * 4 * 2  # 30 blocks x q, k, v, o x (a, b)
    assert shapes["blk.0.attn_q.weight.lora_a"] == (576, 8) and shapes["blk.0.attn_q.weight.lora_b"] == (8, 576)
    assert shapes["blk.29.attn_k.weight.lora_b"] == (8, 192)  # 3 KV heads of 64


@pytest.mark.slow
def test_llama_cpp_applies_the_trained_adapter_and_answers_differently(straight_run, smollm2, tmp_path):
    from ragbot.models.chat import GenerationSettings, Message
    from ragbot.models.local import LlamaCppChatModel, unload_models

    adapter, _, _ = straight_run
    question = [Message("user", "What is the capital of France?")]
    greedy = GenerationSettings(temperature=0.0, max_tokens=12)

    def answer(lora: Path | None) -> str:
        unload_models()
        model = LlamaCppChatModel(str(smollm2), n_ctx=256, n_threads=2, lora_path=lora)
        return model.complete(question, greedy).text

    try:
        base, tuned = answer(None), answer(adapter)
    finally:
        unload_models()
    assert tuned.strip() and tuned != base, (base, tuned)


def crash_at(step_to_die: int, kind: type[BaseException] = RuntimeError):
    """An ``on_step`` that dies after the given step."""

    def on_step(step: int, loss: float) -> None:
        if step == step_to_die:
            raise kind("killed")

    return on_step


@pytest.mark.slow
def test_a_run_killed_between_checkpoints_resumes_from_the_last_one(straight_run, smollm2, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    valid = write_jsonl(tmp_path / "valid.jsonl", chat_rows([("What is the capital of Peru?", "Zorbleton.")]))
    out = tmp_path / "adapter.gguf"
    settings = TrainSettings(steps=4, checkpoint_every=2, **QUICK)

    # Dies after step 3 with no chance to save (as kill -9 would): the checkpoint of step 2 is what is left.
    with pytest.raises(RuntimeError, match="killed"):
        trainer.train(data, smollm2, out, settings, valid=valid, on_step=crash_at(3, RuntimeError))
    assert not out.exists()  # no adapter from a run that did not end
    meta = trainer.read_checkpoint_meta(tmp_path / "adapter.gguf.checkpoints" / trainer.CHECKPOINT_NAME)
    assert meta["state"]["step"] == 2
    with pytest.raises(FinetuneError, match=r"a checkpoint of an earlier run \(step 2\) .* add --resume"):
        trainer.train(data, smollm2, out, settings, valid=valid)

    # Resumed, then Ctrl-C after step 3: that step is saved on the way out.
    with pytest.raises(FinetuneError, match="stopped at step 3 of 4; the checkpoint in .* keeps step 3"):
        trainer.train(data, smollm2, out, settings, valid=valid, resume=True, on_step=crash_at(3, KeyboardInterrupt))

    result = trainer.train(data, smollm2, out, settings, valid=valid, resume=True)
    record = result.record
    assert result.finished and record["steps"] == 4 and record["resumed_from_step"] == 3
    assert [run["from_step"] for run in record["runs"]] == [0, 2, 3]
    assert [s for s, _ in record["losses"]] == [1, 2, 3, 4]
    # the same weights as the run that was never interrupted
    straight, resumed = adapter_arrays(straight_run[0]), adapter_arrays(out)
    assert straight.keys() == resumed.keys()
    for name in straight:
        np.testing.assert_allclose(resumed[name], straight[name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_a_finished_run_with_kept_checkpoints_goes_on_to_more_steps(straight_run, smollm2, tmp_path):
    """Training in stages (an adapter at 2 steps, then at 4, for a curve of quality against
    examples) ends with the weights of one unbroken 4-step run."""
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    valid = write_jsonl(tmp_path / "valid.jsonl", chat_rows([("What is the capital of Peru?", "Zorbleton.")]))
    first = trainer.train(
        data, smollm2, tmp_path / "two.gguf", TrainSettings(steps=2, checkpoint_every=2, **QUICK), valid=valid,
        keep_checkpoints=True, checkpoint_dir=tmp_path / "ckpt",
    )  # fmt: skip
    assert first.finished and first.record["steps"] == 2 and (tmp_path / "two.gguf").exists()
    assert trainer.read_checkpoint_meta(tmp_path / "ckpt" / trainer.CHECKPOINT_NAME)["state"]["step"] == 2
    more = trainer.train(
        data, smollm2, tmp_path / "four.gguf", TrainSettings(steps=4, checkpoint_every=2, **QUICK), valid=valid,
        resume=True, checkpoint_dir=tmp_path / "ckpt",
    )  # fmt: skip
    assert more.finished and more.record["resumed_from_step"] == 2 and more.record["steps"] == 4
    straight, staged = adapter_arrays(straight_run[0]), adapter_arrays(tmp_path / "four.gguf")
    for name in straight:
        np.testing.assert_allclose(staged[name], straight[name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_other_settings(straight_run, smollm2, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    out = tmp_path / "adapter.gguf"
    settings = TrainSettings(steps=2, checkpoint_every=1, valid_share=0, **QUICK)
    with pytest.raises(RuntimeError, match="killed"):
        trainer.train(data, smollm2, out, settings, on_step=crash_at(2))
    other = TrainSettings(steps=2, checkpoint_every=1, valid_share=0, **{**QUICK, "rank": 4})
    with pytest.raises(FinetuneError, match=r"--resume: the checkpoint .* is of another run: rank \(8 then, 4 now\)"):
        trainer.train(data, smollm2, out, other, resume=True)


@pytest.mark.slow
def test_only_the_assistant_tokens_are_trained(smollm2):
    tokenizer = trainer.load_base_tokenizer(trainer.resolve_base(str(smollm2)))
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Old answer.", "weight": 0},
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": "New answer."},
    ]
    encoded = trainer.encode_chat(tokenizer, messages)
    trained = tokenizer.decode([t for t in encoded.labels if t != -100])
    assert trained.startswith("New answer.") and "Old answer" not in trained and "Hi" not in trained
    assert "<|im_end|>" in trained  # the model learns to end its turn


@pytest.mark.slow
def test_a_time_budget_stops_with_an_adapter_and_a_checkpoint_to_resume(smollm2, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    out = tmp_path / "adapter.gguf"
    settings = TrainSettings(steps=3, checkpoint_every=10, valid_share=0, minutes=0.0001, **QUICK)
    first = trainer.train(data, smollm2, out, settings)
    assert not first.finished and first.record["stopped"] == "time budget" and first.record["steps"] == 1
    assert out.exists() and "stopped by the time budget at step 1 of 3 (--resume goes on)" in first.summary()
    assert (
        trainer.read_checkpoint_meta(tmp_path / "adapter.gguf.checkpoints" / trainer.CHECKPOINT_NAME)["state"]["step"]
        == 1
    )
    rest = trainer.train(
        data, smollm2, out, TrainSettings(steps=3, checkpoint_every=10, valid_share=0, **QUICK), resume=True
    )
    assert rest.finished and rest.record["steps"] == 3 and rest.record["resumed_from_step"] == 1
    assert not (tmp_path / "adapter.gguf.checkpoints").exists()
