"""notebooks/03_llamaindex.ipynb runs top to bottom (its own asserts check the hit and the miss)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[3]
NOTEBOOK = ROOT / "notebooks" / "03_llamaindex.ipynb"


@pytest.mark.model
def test_llamaindex_notebook_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the kernel inherits it: the bundled model, no network
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    printed = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "[cache miss] 'Which computer did the author first program?'" in printed
    assert "[cache hit semantic" in printed
    assert "LLM calls so far: 1" in printed and "LLM calls so far: 2" in printed
