"""The systems `peers.py` compares, each behind one small adapter: open, store, lookup, footprint, close.

Every system stores the answer id (the stored text's row number) as its answer, so a served answer names the
stored text it came from, and every system gets the same vectors through an embedding function that looks
them up (`VectorTable`). Peers are used through their ordinary public APIs at their default settings; see
each class for what the default is and how it reads as a cosine-similarity threshold.
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semantic_llm_cache import SemanticCache
from semantic_llm_cache.embeddings import LocalEmbedder
from semantic_llm_cache.embeddings.local import BUNDLED_MODEL_NAME

DIMENSION = 384
LLM_STRING = "peers-benchmark-llm"  # LangChain caches key by (prompt, llm_string); one model here


class VectorTable:
    """Precomputed vectors of every prompt of the run (normalised prompt text -> unit float32 vector)."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.fallback = next(iter(vectors.values()))

    def vector(self, text: str) -> np.ndarray:
        # Unknown texts are only the probes some peers embed once to learn the dimension ("test").
        return self.vectors.get(text, self.fallback)

    def as_list(self, text: str) -> list[float]:
        return self.vector(text).tolist()  # type: ignore[no-any-return]


class TableEmbedder:
    """Our Embedder protocol over the table. It carries the bundled model's name: the vectors are that
    model's, so entries stored through it share a partition with lookups through the real LocalEmbedder."""

    name = BUNDLED_MODEL_NAME
    dimension = DIMENSION

    def __init__(self, table: VectorTable) -> None:
        self.table = table

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.table.vector(text) for text in texts])


class System:
    """One cache under test. Async systems implement `lookup`; sync-only ones `lookup_sync` (threaded)."""

    key = ""
    label = ""
    default = ""  # its default setting, as the library spells it
    cosine: float | None = None  # that default as a cosine-similarity threshold (None: exact text only)
    threaded = False  # a sync-only API: 64 concurrent callers are 64 threads
    embeds_every_lookup = True  # False: never embeds (exact match only)
    server: str | None = None  # "plain" or "search" when it needs a Redis server
    heap_note = "tracemalloc"
    external_note = ""
    stores = True  # False: looks up another system's entries (stores nothing of its own)

    async def open(self) -> None:
        """Connect / create, before anything is measured."""

    async def store(self, number: int, text: str) -> None:
        raise NotImplementedError

    async def lookup(self, text: str) -> int | None:
        """The answer id served for `text`, or None on a miss."""
        return self.lookup_sync(text)

    def lookup_sync(self, text: str) -> int | None:
        raise NotImplementedError

    def embedded_last(self) -> bool:
        """Whether the last lookup needed an embedding (the model's time is added to it afterwards)."""
        return self.embeds_every_lookup

    def external_bytes(self) -> int | None:
        """Bytes outside this process's Python heap that the entries take (Redis memory, files), or None."""
        return None

    async def settle(self) -> None:
        """Wait until everything stored is searchable (a server-side index catching up)."""

    async def close(self) -> None:
        pass


class RedisMemory:
    """INFO used_memory of a server, and a wait for its search indexes to finish indexing."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    async def wait_indexed(self) -> None:
        for name in self.client.execute_command("FT._LIST"):
            index = self.client.ft(name.decode() if isinstance(name, bytes) else str(name))
            for _ in range(600):
                if not int(index.info().get("indexing", 0) or 0):
                    break
                await asyncio.sleep(0.1)

    def flush(self) -> None:
        self.client.flushall()

    def close(self) -> None:
        self.client.close()


# -- this library -------------------------------------------------------------------------------------------


class Ours(System):
    """SemanticCache at its defaults (threshold 0.94, answer guard on, 4 candidates) over one backend."""

    default = "threshold 0.94, guard on"
    cosine = 0.94
    embeds_every_lookup = False  # an exact text match is served before any embedding
    _last_exact = False

    def __init__(self, key: str, label: str, table: VectorTable, url: str | None = None) -> None:
        self.key = key
        self.label = label
        self.table = table
        self.url = url
        self.server = {"ours-redis-client": "plain", "ours-redis-search": "search"}.get(key)
        self.directory: Path | None = None
        self.redis: RedisMemory | None = None
        self.external_note = {"ours-sqlite": "file", "ours-memory": ""}.get(key, "Redis used_memory")

    def _backend(self) -> Any:
        if self.key == "ours-memory":
            from semantic_llm_cache import MemoryBackend

            return MemoryBackend()
        if self.key == "ours-sqlite":
            from semantic_llm_cache.backends.sqlite import SQLiteBackend

            self.directory = Path(tempfile.mkdtemp(prefix="peers-sqlite-"))
            return SQLiteBackend(self.directory / "cache.db")
        from semantic_llm_cache.backends.redis import RedisBackend

        assert self.url is not None
        self.redis = RedisMemory(self.url)
        mode = "client" if self.key.endswith("client") else "search"
        return RedisBackend(self.url, prefix=f"peers-{mode}:", index=mode)  # apart: both may share a server

    async def open(self) -> None:
        self.backend = self._backend()
        self.cache = SemanticCache(backend=self.backend, embedder=TableEmbedder(self.table))

    async def store(self, number: int, text: str) -> None:
        await self.cache.store(text, number)

    async def lookup(self, text: str) -> int | None:
        hit = await self.cache.lookup(text)
        self._last_exact = hit is not None and hit.kind == "exact"
        return None if hit is None else int(hit.response)

    def embedded_last(self) -> bool:
        return not self._last_exact

    async def timed_with_model(self, texts: Sequence[str], embedder: LocalEmbedder) -> list[float]:
        """Lookup latency with the real bundled model embedding each query (exact matches skip it)."""
        cache = SemanticCache(backend=self.backend, embedder=embedder)
        durations = []
        for text in texts:
            started = time.perf_counter()
            await cache.lookup(text)
            durations.append(time.perf_counter() - started)
        return durations

    def external_bytes(self) -> int | None:
        if self.redis is not None:
            return self.redis.used_memory()
        if self.directory is not None:
            return sum(path.stat().st_size for path in self.directory.iterdir())
        return None

    async def settle(self) -> None:
        if self.redis is not None and self.key.endswith("search"):
            await self.redis.wait_indexed()
        elif self.redis is not None:  # as search mode waits for the server's indexing: the local index's build
            await self.local_index_built()

    async def local_index_built(self) -> None:
        """Client mode: the first search builds this process's index of the partition (a SCAN), which moves to
        HNSW in the background past 20,000 entries; wait for both, so that lookups meet the steady state."""
        partition = self.cache.partition_for(None)
        replica = self.backend._strategies["client"]  # the benchmark looks inside
        for _ in range(6000):  # at most ten minutes
            # a search (no call timeout) builds the index, and adopts a finished graph
            await self.backend.find_nearest(self.table.fallback, 0.99, 1, partition=partition)
            if all(getattr(index.index, "kind", "flat") != "migrating" for index in replica.partitions.values()):
                return
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self.cache.close()
        if self.redis is not None:
            self.redis.flush()
            self.redis.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


# -- GPTCache -----------------------------------------------------------------------------------------------


class GPTCacheSystem(System):
    """GPTCache's own semantic set-up, `init_similar_cache()`: SQLite + FAISS (IDMap,Flat, L2) data manager,
    SearchDistanceEvaluation(max_distance=4.0, positive=False), Config(similarity_threshold=0.8), top_k=1.

    Its search returns the squared L2 distance d of unit vectors (d = 2 - 2 cos); the evaluation scores
    4 - d and a hit needs score >= 0.8 * (4 - 0): d <= 0.8, i.e. cos >= 0.6. The memory eviction's default
    max_size of 1,000 would evict most of the data: it is set to the number of stored prompts. GPTCache's
    API is synchronous (get/put), so concurrent callers are threads.
    """

    key = "gptcache"
    label = "GPTCache (SQLite + FAISS, `init_similar_cache`)"
    default = "SearchDistanceEvaluation, similarity_threshold 0.8 (d_L2² ≤ 0.8)"
    cosine = 0.6
    threaded = True
    external_note = "SQLite file + FAISS index"

    def __init__(self, table: VectorTable, entries: int, faiss_threads: int | None) -> None:
        self.table = table
        self.entries = entries
        self.faiss_threads = faiss_threads

    async def open(self) -> None:
        import faiss
        from gptcache import Cache
        from gptcache.adapter.api import get, init_similar_cache, put
        from gptcache.manager import manager_factory

        if self.faiss_threads is not None:
            faiss.omp_set_num_threads(self.faiss_threads)
        self.directory = Path(tempfile.mkdtemp(prefix="peers-gptcache-"))
        # registered before GPTCache registers its own exit hook (which flushes into the directory): runs after
        atexit.register(shutil.rmtree, self.directory, ignore_errors=True)
        table = self.table

        class Embedding:
            dimension = DIMENSION

            @staticmethod
            def to_embeddings(text: str, **_: Any) -> np.ndarray:
                return table.vector(text)

        self.data_manager = manager_factory("sqlite,faiss", data_dir=str(self.directory),
                                            vector_params={"dimension": DIMENSION},
                                            eviction_params={"max_size": self.entries})  # fmt: skip
        self.cache = Cache()
        init_similar_cache(data_dir=str(self.directory), cache_obj=self.cache, embedding=Embedding(),
                           data_manager=self.data_manager)  # fmt: skip
        self.embedding = Embedding
        self._get, self._put = get, put

    async def store(self, number: int, text: str) -> None:
        self._put(text, str(number), cache_obj=self.cache)

    def lookup_sync(self, text: str) -> int | None:
        answer = self._get(text, cache_obj=self.cache)
        return None if answer is None else int(answer)

    def stored_count(self) -> int:
        return int(self.data_manager.v.count())

    def external_bytes(self) -> int | None:
        self.data_manager.flush()
        return sum(path.stat().st_size for path in self.directory.iterdir() if path.is_file())

    async def close(self) -> None:
        self.data_manager.close()


class GPTCacheExactSystem(System):
    """GPTCache's `Cache.init()` defaults on the same data manager: similarity_evaluation=ExactMatchEvaluation
    (score 1 when the nearest stored question is the same string, else 0; threshold 0.8): exact text only,
    found through a FAISS search."""

    key = "gptcache-exact"
    label = "GPTCache (`Cache.init()` default evaluation)"
    default = "ExactMatchEvaluation, similarity_threshold 0.8"
    cosine = None
    threaded = True
    heap_note = "shared with the row above"
    stores = False

    def __init__(self, semantic: GPTCacheSystem) -> None:
        from gptcache import Cache
        from gptcache.processor.pre import get_prompt

        self.semantic = semantic
        self.cache = Cache()
        self.cache.init(pre_embedding_func=get_prompt, embedding_func=semantic.embedding.to_embeddings,
                        data_manager=semantic.data_manager)  # fmt: skip

    def lookup_sync(self, text: str) -> int | None:
        answer = self.semantic._get(text, cache_obj=self.cache)
        return None if answer is None else int(answer)


# -- Redis peers --------------------------------------------------------------------------------------------


class RedisVLSystem(System):
    """RedisVL `SemanticCache` at its default distance_threshold 0.1, in Redis COSINE distance units
    (1 - cos, inclusive VECTOR_RANGE): cos >= 0.9. Flat index; check() returns the nearest entry in range."""

    key = "redisvl"
    label = "RedisVL SemanticCache"
    server = "search"
    external_note = "Redis used_memory"

    def __init__(self, table: VectorTable, url: str) -> None:
        self.table = table
        self.url = url

    async def open(self) -> None:
        from redisvl.extensions.cache.llm import SemanticCache as RedisVLCache
        from redisvl.utils.vectorize import CustomVectorizer

        table = self.table

        async def aembed(text: str, **_: Any) -> list[float]:
            return table.as_list(text)

        vectorizer = CustomVectorizer(embed=table.as_list, aembed=aembed)
        self.redis = RedisMemory(self.url)
        self.cache = RedisVLCache(name="redisvl", redis_url=self.url, vectorizer=vectorizer, overwrite=True)
        distance = float(self.cache.distance_threshold)
        self.default = f"distance_threshold {distance:g} (cosine distance)"
        self.cosine = 1 - distance

    async def store(self, number: int, text: str) -> None:
        await self.cache.astore(prompt=text, response=str(number))  # the async API, as for lookups (acheck)

    async def lookup(self, text: str) -> int | None:
        hits = await self.cache.acheck(prompt=text)
        return int(hits[0]["response"]) if hits else None

    def external_bytes(self) -> int | None:
        return self.redis.used_memory()

    async def settle(self) -> None:
        await self.redis.wait_indexed()

    async def close(self) -> None:
        await self.cache.adisconnect()
        self.cache.disconnect()
        self.redis.flush()
        self.redis.close()


class LangChainRedisSystem(System):
    """langchain-redis `RedisSemanticCache` at its default distance_threshold 0.2 (RedisVL underneath, same
    cosine-distance units): cos >= 0.8. The answer is a Generation whose text is the answer id."""

    key = "langchain-redis"
    label = "langchain-redis RedisSemanticCache"
    server = "search"
    external_note = "Redis used_memory"

    def __init__(self, table: VectorTable, url: str) -> None:
        self.table = table
        self.url = url

    async def open(self) -> None:
        from langchain_core.embeddings import Embeddings
        from langchain_core.outputs import Generation
        from langchain_redis import RedisSemanticCache

        table = self.table

        class TableEmbeddings(Embeddings):
            def embed_documents(self, texts: list[str]) -> list[list[float]]:
                return [table.as_list(text) for text in texts]

            def embed_query(self, text: str) -> list[float]:
                return table.as_list(text)

        self.generation = Generation
        self.redis = RedisMemory(self.url)
        self.cache = RedisSemanticCache(embeddings=TableEmbeddings(), redis_url=self.url)
        distance = float(self.cache.cache.distance_threshold)
        self.default = f"distance_threshold {distance:g} (cosine distance)"
        self.cosine = 1 - distance

    async def store(self, number: int, text: str) -> None:
        self.cache.update(text, LLM_STRING, [self.generation(text=str(number))])

    async def lookup(self, text: str) -> int | None:
        found = await self.cache.alookup(text, LLM_STRING)
        return int(found[0].text) if found else None

    def external_bytes(self) -> int | None:
        return self.redis.used_memory()

    async def settle(self) -> None:
        await self.redis.wait_indexed()

    async def close(self) -> None:
        self.redis.flush()
        self.redis.close()
        self.cache.redis.close()


class LangChainMemorySystem(System):
    """langchain-core `InMemoryCache`: a dict keyed by (prompt, llm_string); exact text only, no embedding."""

    key = "langchain-memory"
    label = "langchain-core InMemoryCache"
    default = "exact (prompt, llm_string)"
    cosine = None
    embeds_every_lookup = False

    async def open(self) -> None:
        from langchain_core.caches import InMemoryCache
        from langchain_core.outputs import Generation

        self.generation = Generation
        self.cache = InMemoryCache()

    async def store(self, number: int, text: str) -> None:
        self.cache.update(text, LLM_STRING, [self.generation(text=str(number))])

    async def lookup(self, text: str) -> int | None:
        found = await self.cache.alookup(text, LLM_STRING)
        return int(found[0].text) if found else None
