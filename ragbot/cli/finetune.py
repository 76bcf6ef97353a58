"""``ragbot finetune ...``: thin commands over ``ragbot.finetune``.

The group is defined in ``cli_group``; the data commands (prepare, validate) live in
``cli_data``, the job and swap commands (create, follow, list, metrics, cancel, use) in
``cli_jobs``, local training (train) in ``cli_train``. Importing them here adds their commands
to the group.
"""

from __future__ import annotations

from ragbot.cli import finetune_data as cli_data  # noqa: F401  (they add their commands to the group)
from ragbot.cli import finetune_jobs as cli_jobs  # noqa: F401  (they add their commands to the group)
from ragbot.cli import finetune_train as cli_train  # noqa: F401  (they add their commands to the group)
from ragbot.cli.finetune_group import finetune

__all__ = ["finetune"]
