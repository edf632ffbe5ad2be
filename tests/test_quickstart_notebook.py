"""notebooks/01_quickstart.ipynb runs top to bottom (its cells assert what they show)."""

from __future__ import annotations

import nbformat
import pytest

from tests.notebooks import NOTEBOOKS, run_notebook

NOTEBOOK = NOTEBOOKS / "01_quickstart.ipynb"


def test_quickstart_notebook_is_saved_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells)
    assert all("assert " in cell.source for cell in code_cells[1:])  # every step checks what it shows


@pytest.mark.model
def test_quickstart_notebook_executes() -> None:
    printed = run_notebook("01_quickstart.ipynb")
    assert "-> exact" in printed
    assert "-> semantic" in printed
    assert "-> miss" in printed
    assert "10 concurrent callers, 1 LLM call" in printed
