"""Execute a tutorial notebook as a reader would, offline; shared by every notebook test."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def run_notebook(name: str, *, timeout: int = 300, cwd: Path = ROOT) -> str:
    """Run notebooks/`name` top to bottom in a fresh python3 kernel and return what its cells printed.

    The kernel inherits this process's environment; HF_HUB_OFFLINE=1 makes the bundled model the only one it can
    load. A cell that raises (the notebooks' cells assert what they show) fails the test with nbclient's error.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        notebook, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(cwd)}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.get("output_type") == "error"]
    return "".join(output.get("text", "") for output in outputs if output.get("name") == "stdout")
