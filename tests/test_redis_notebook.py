"""notebooks/04_redis_scale_out.ipynb runs top to bottom against a Redis the suite starts (issue #3)."""

from __future__ import annotations

import pytest

from tests.notebooks import NOTEBOOKS, run_notebook
from tests.plugins.redis_servers import RedisServer, unique_prefix


@pytest.mark.redis
@pytest.mark.model
def test_scale_out_notebook_runs(redis_search_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_search_server.url)  # the kernel inherits this process's environment
    monkeypatch.setenv("CACHE_PREFIX", unique_prefix())
    printed = run_notebook("04_redis_scale_out.ipynb", timeout=240, cwd=NOTEBOOKS)
    assert "instance B computed it: False" in printed
    assert "index: search" in printed
