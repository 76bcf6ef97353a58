"""``ragbot finetune ...``: thin commands over ``ragbot.finetune``.

The data commands (prepare, validate) live in ``cli_data``, the job and swap commands
(create, follow, list, metrics, cancel, use) in ``cli_jobs``; both register on this group.
"""

from __future__ import annotations

import click


@click.group()
def finetune() -> None:
    """Build training data, run fine-tune jobs, and swap the fine-tuned model in."""


def _register() -> None:
    # Imported for their side effect of adding commands to the group.
    from ragbot.finetune import cli_data, cli_jobs  # noqa: F401


_register()
