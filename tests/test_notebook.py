"""The quickstart notebook runs top to bottom with the real default models, so it cannot rot."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes_and_shows_the_nile_follow_up(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    # "".join: a cell's printed text can arrive as several stream outputs, split mid-line
    outputs = "".join(
        o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )
    assert re.search(r"standalone question: .*尼罗河.*国家", outputs), outputs  # the pronoun resolved
    assert "route: grounded" in outputs, outputs
    assert "fallback | 知识库中没有找到相关内容，以下是通用回答" in outputs, outputs
