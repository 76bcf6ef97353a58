"""The bundled trained rewriter: the default rewrite role of a local configuration.

A LoRA adapter for Qwen2.5-0.5B trained here on human rewrites (``adapters/``, built by the command
in its record ``rewriter-qwen2.5-0.5b.gguf.json`` and docs/fine-tuning.md). It writes the two parts
the chain-of-thought prompt asks for from the short prompt (``prompts/rewrite_trained.*``: history
and question, no instructions or examples), so a follow-up's rewrite evaluates a few hundred prompt
tokens on a model a third the size instead of ~1,000 on the answer model; docs/evaluation.md has
the figures.

It takes the rewrite role only in the default local configuration: the answer model is the default
local one, the rewrite role has no ``rewrite_model``, ``rewrite_lora_path`` or ``rewrite_prompt`` of
its own, and the 0.5B model's packages are installed. ``rewrite_model = "qwen2.5-1.5b"`` (or any
model) brings back the chain-of-thought prompt.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ragbot.config import Settings
from ragbot.models.chat import chat_backend, role_model
from ragbot.models.local_files import DEFAULT_MODEL, MODELS, missing_packages

log = logging.getLogger(__name__)

BASE_MODEL = "qwen2.5-0.5b"
ADAPTER = Path(__file__).parent / "adapters" / "rewriter-qwen2.5-0.5b.gguf"
PROMPT = "rewrite_trained"
# Trained on histories of two utterances; a cold rewrite within ~250 prompt tokens on KdConv turns
# (bench/rewrite_prompt_tokens.py: p50 225 at 300, 273 at 400).
HISTORY_TOKENS = 300


def with_local_rewriter(settings: Settings) -> Settings:
    """``settings`` with the rewrite role on the bundled trained rewriter when the settings leave the
    role unconfigured and it runs locally; otherwise ``settings`` unchanged."""
    own = settings.rewrite_model or settings.rewrite_lora_path or settings.rewrite_prompt != "rewrite"
    answer = role_model(settings, "answer")
    if (
        own
        or answer not in (None, DEFAULT_MODEL)
        or not ADAPTER.is_file()
        or chat_backend(settings, "rewrite") != "local"
    ):
        return settings
    if missing := missing_packages(MODELS[BASE_MODEL]):
        log.info(
            "the trained rewriter needs %s (pip install 'ragbot[local]'); rewriting with the answer model",
            ", ".join(missing),
        )
        return settings
    return settings.replace(
        rewrite_model=BASE_MODEL,
        rewrite_lora_path=ADAPTER,
        rewrite_prompt=PROMPT,
        rewrite_history_tokens=min(settings.rewrite_history_tokens, HISTORY_TOKENS),
    )
