"""``ragbot finetune create/follow/list/metrics/cancel/use`` (to be built)."""
