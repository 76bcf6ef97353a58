"""``ragbot finetune train``: a thin command over ``ragbot.finetune.train``."""

from __future__ import annotations

import click

from ragbot.cli.finetune_group import finetune
from ragbot.config import load_settings


def _targets(ctx, param, value: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in value.split(",") if t.strip())


@finetune.command()
@click.argument("data", type=click.Path(dir_okay=False))
@click.option(
    "--base",
    required=True,
    help="Base model: a built-in local alias (smollm2-135m, qwen2.5-0.5b, ...) or a .gguf file.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="The GGUF LoRA adapter to write (.gguf); its record goes beside it (adapter.gguf.json).",
)
@click.option(
    "--valid",
    type=click.Path(dir_okay=False),
    default=None,
    help="Held-out chat examples scored at each checkpoint (default: --valid-share of DATA).",
)
@click.option(
    "--valid-share",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Share of DATA held out when --valid is not given.",
)
@click.option("--rank", type=click.IntRange(min=1), default=8, show_default=True, help="LoRA rank.")
@click.option("--alpha", type=float, default=16.0, show_default=True, help="LoRA alpha (scale = alpha / rank).")
@click.option(
    "--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True, help="LoRA dropout."
)
@click.option(
    "--targets",
    default="q,k,v,o",
    show_default=True,
    callback=_targets,
    help="Projections to adapt: q,k,v,o (attention), gate,up,down (MLP).",
)
@click.option("--lr", type=float, default=2e-4, show_default=True, help="Learning rate (AdamW).")
@click.option(
    "--warmup-steps",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Linear warm-up of the learning rate.",
)
@click.option("--epochs", type=float, default=1.0, show_default=True, help="Passes over the training examples.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimizer steps (instead of --epochs).")
@click.option("--minutes", type=float, default=None, help="Stop after this many minutes of training (resumable).")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Examples per forward pass."
)
@click.option(
    "--grad-accum", type=click.IntRange(min=1), default=1, show_default=True, help="Forward passes per optimizer step."
)
@click.option(
    "--max-length",
    type=click.IntRange(min=16),
    default=1024,
    show_default=True,
    help="Longer examples are left out (counted in the record).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the LoRA init, the held-out split and the data order.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch threads (default: num_threads from the config, else all cores).",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Steps between checkpoints (and held-out scores).",
)
@click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where checkpoints go (default: OUT.checkpoints).",
)
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint of the same run.")
@click.option(
    "--keep-checkpoints",
    is_flag=True,
    help="Keep the final checkpoint of a finished run: --resume with a larger --steps goes on from it.",
)
@click.pass_context
def train(ctx, data, base, out, valid, checkpoint_dir, resume, keep_checkpoints, **options) -> None:
    """Fine-tune a local model with LoRA on DATA (chat SFT JSONL, as `finetune prepare` writes) and
    write a GGUF LoRA adapter that llama.cpp applies to the base model."""
    from ragbot.finetune.train import TrainSettings
    from ragbot.finetune.train import train as run_training

    settings = load_settings(ctx.find_root().obj["config"])
    if options["threads"] is None:
        options["threads"] = settings.num_threads
    result = run_training(
        data,
        base,
        out,
        TrainSettings(**options),
        valid=valid,
        resume=resume,
        checkpoint_dir=checkpoint_dir,
        keep_checkpoints=keep_checkpoints,
        models_dir=settings.models_dir,
        progress=True,
    )
    click.echo(result.summary())
    from ragbot.finetune.rewrite_data import is_rewriter_data

    role = " --role rewrite" if is_rewriter_data(data) else ""  # made by `finetune rewrite-data`
    click.echo(f"Use it with: ragbot finetune use {base}{role} --lora {result.adapter}")
