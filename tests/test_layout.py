"""The package layout is the architecture: lower layers never import higher ones, and no module
imports itself back through others. Read with the standard library's ``ast``, so a forbidden
import inside a function counts as much as one at the top of a file."""

from __future__ import annotations

import ast

import pytest

from helpers import MODULES, find_cycle, imports_of

# Lowest first. A module may import from its own layer and the layers before it.
LAYERS = [
    (
        "core",
        [
            "ragbot.errors",
            "ragbot.config",
            "ragbot.registry",
            "ragbot.tokens",
            "ragbot.migrations",
            "ragbot.text",
            "ragbot.files",
        ],
    ),
    ("models", ["ragbot.models"]),
    ("storage", ["ragbot.storage"]),
    ("knowledge", ["ragbot.knowledge"]),
    ("conversation", ["ragbot.conversation"]),
    ("evaluation", ["ragbot.evaluation"]),
    ("finetune", ["ragbot.finetune"]),
    ("server", ["ragbot.server"]),
    ("testing", ["ragbot.testing"]),
    ("cli", ["ragbot.cli"]),
    ("api", ["ragbot", "ragbot.__main__", "ragbot.bot", "ragbot.knowledge_base"]),
]


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            # the top package itself is matched exactly: a new top-level module must be given a layer
            below = module.startswith(prefix + ".") and prefix != "ragbot"
            if (module == prefix or below) and len(prefix) > best_len:
                best, best_len = rank, len(prefix)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS in {__file__}"
    return best


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_is_in_a_layer_and_every_layer_exists():
    for module in MODULES:
        layer_of(module)
    for name, prefixes in LAYERS:
        assert all(p in MODULES for p in prefixes), f"layer {name} names a module that does not exist: {prefixes}"


def test_lower_layers_never_import_higher_ones():
    wrong = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
        for m, targets in GRAPH.items()
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_not_even_through_type_only_imports():
    # the package's own __init__ re-exports the public surface: importing from it is an import of the
    # whole API, which only the api layer may do (checked above); leave it out of the cycle search.
    # Two modules that need each other's types are one module, or one of them wants a Protocol.
    graph = {m: {t for t in imports_of(m, typing=True) if t != "ragbot"} for m in MODULES if m != "ragbot"}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("documented", ["ragbot.bot", "ragbot.knowledge_base"])
def test_documented_imports_keep_working(documented):
    import importlib

    module = importlib.import_module(documented)
    assert hasattr(module, "RagBot" if documented == "ragbot.bot" else "KnowledgeBase")


def test_the_public_surface_and_every_error_are_exported_from_ragbot():
    import ragbot
    import ragbot.errors as errors

    for name in ("RagBot", "Conversation", "Answer", "Route", "Turn", "KnowledgeBase", "Settings", "Hit", "evaluate"):
        assert getattr(ragbot, name) is not None
    error_types = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.RagbotError)]
    assert len(error_types) > 10
    for error in error_types:
        assert getattr(ragbot, error.__name__) is error
    # no error class meant for people is defined outside ragbot.errors
    strays = [
        f"{m}.{node.name}"
        for m, path in MODULES.items()
        if m != "ragbot.errors"
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(node, ast.ClassDef)
        and not node.name.startswith("_")
        and any("Error" in ast.unparse(b) for b in node.bases)
    ]
    assert not strays, f"errors defined outside ragbot.errors: {strays}"
