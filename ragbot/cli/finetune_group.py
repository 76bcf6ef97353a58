"""The ``ragbot finetune`` command group, on its own so the command modules can add to it
without importing ``ragbot.cli.finetune``, which imports them."""

from __future__ import annotations

import click


@click.group()
def finetune() -> None:
    """Build training data, run fine-tune jobs, and swap the fine-tuned model in."""
