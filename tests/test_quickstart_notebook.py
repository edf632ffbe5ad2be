"""notebooks/01_quickstart.ipynb runs top to bottom (its cells assert what they show)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_quickstart.ipynb"


def test_quickstart_notebook_is_saved_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells)
    assert all("assert " in cell.source for cell in code_cells[1:])  # every step checks what it shows


@pytest.mark.model
def test_quickstart_notebook_executes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the kernel inherits it: the bundled model, never the network
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.get("output_type") == "error"]
    printed = "".join(output.get("text", "") for output in outputs if output.get("name") == "stdout")
    assert "-> exact" in printed
    assert "-> semantic" in printed
    assert "-> miss" in printed
    assert "10 concurrent callers, 1 LLM call" in printed
    assert os.environ["HF_HUB_OFFLINE"] == "1"
