"""``ragbot finetune ...``: thin commands over ``ragbot.finetune``.

The group is defined in ``cli_group``; the data commands (prepare, validate) live in
``cli_data``, the job and swap commands (create, follow, list, metrics, cancel, use) in
``cli_jobs``. Importing them here adds their commands to the group.
"""

from __future__ import annotations

from ragbot.finetune import cli_data, cli_jobs  # noqa: F401  (they add their commands to the group)
from ragbot.finetune.cli_group import finetune

__all__ = ["finetune"]
