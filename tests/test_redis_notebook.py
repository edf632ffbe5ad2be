"""notebooks/04_redis_scale_out.ipynb runs top to bottom against a Redis the suite starts (issue #3)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.plugins.redis_servers import RedisServer, unique_prefix

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04_redis_scale_out.ipynb"


@pytest.mark.redis
@pytest.mark.model
def test_scale_out_notebook_runs(redis_search_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_search_server.url)  # the kernel inherits this process's environment
    monkeypatch.setenv("CACHE_PREFIX", unique_prefix())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    outputs = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "instance B computed it: False" in outputs
    assert "index: search" in outputs
