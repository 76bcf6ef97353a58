"""``ragbot finetune prepare`` and ``ragbot finetune validate`` (to be built)."""
