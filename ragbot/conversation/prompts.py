"""Prompt templates, kept as files in ``prompts/`` and loaded by name.

A prompt file has a ``[system]`` section (static text: instructions, examples) and a
``[user]`` section (the changing part), with ``${variable}`` placeholders. Keeping the
static part first lets a local model reuse its cached prefix from one turn to the next.
A user's own ``prompt_dir`` overrides files of the same name. Rendering checks that the
template uses exactly the variables the code provides, so a typo in an edited prompt is
reported instead of silently dropping the evidence or the question.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from ragbot.config import bundled_dir
from ragbot.errors import PromptError
from ragbot.models.chat import Message

_SECTION = re.compile(r"^\[(system|user)\]\s*$", re.MULTILINE)


def bundled_prompt_dir() -> Path:
    folder = bundled_dir("prompts")
    if folder is not None:
        return folder
    raise PromptError("the bundled prompts are missing from this install; reinstall ragbot")


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    path: Path
    system: Template
    user: Template

    @property
    def variables(self) -> set[str]:
        return set(self.system.get_identifiers()) | set(self.user.get_identifiers())

    def render(self, **values: str) -> list[Message]:
        """System and user messages with ``values`` filled in; every variable must match."""
        missing = sorted(set(values) - self.variables)
        unknown = sorted(self.variables - set(values))
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"does not use {', '.join('${' + v + '}' for v in missing)}, which ragbot provides")
            if unknown:
                parts.append(f"uses {', '.join('${' + v + '}' for v in unknown)}, which ragbot does not provide")
            raise PromptError(
                f"prompt {self.path} {' and '.join(parts)}; available variables: {', '.join(sorted(values))}"
            )
        return [
            Message("system", self.system.substitute(values).strip()),
            Message("user", self.user.substitute(values).strip()),
        ]


def load_prompt(name: str, prompt_dir: Path | None = None) -> PromptTemplate:
    """The prompt ``name`` (e.g. ``rewrite.zh``) from ``prompt_dir`` if it has it, else bundled."""
    candidates = [d / f"{name}.txt" for d in (prompt_dir, bundled_prompt_dir()) if d is not None]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise PromptError(f"no prompt named {name!r}; looked for {', '.join(map(str, candidates))}")
    text = path.read_text(encoding="utf-8")
    sections = _SECTION.split(text)
    # split gives [preamble, name1, body1, name2, body2]
    found = dict(zip(sections[1::2], sections[2::2], strict=True))
    if set(found) != {"system", "user"}:
        raise PromptError(f"prompt {path} needs a [system] and a [user] section, each on its own line")
    return PromptTemplate(name, path, Template(found["system"]), Template(found["user"]))
