"""notebooks/02_langchain.ipynb runs top to bottom (its cells assert what they show)."""

from __future__ import annotations

import pytest

from tests.notebooks import run_notebook


@pytest.mark.model
def test_langchain_notebook_executes() -> None:
    printed = run_notebook("02_langchain.ipynb", timeout=240)
    assert "from cache (semantic, similarity" in printed
