"""notebooks/03_llamaindex.ipynb runs top to bottom (its own asserts check the hit and the miss)."""

from __future__ import annotations

import pytest

from tests.notebooks import run_notebook


@pytest.mark.model
def test_llamaindex_notebook_runs() -> None:
    printed = run_notebook("03_llamaindex.ipynb", timeout=180)
    assert "[cache miss] 'Which computer did the author first program?'" in printed
    assert "[cache hit semantic, similarity 0." in printed
    assert "LLM calls so far: 1" in printed and "LLM calls so far: 2" in printed
