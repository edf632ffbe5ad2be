"""RedisBackend beyond the shared contract: layout, TTL, changelog sync, modes, URLs, corrupt data (issue #3).

Every test runs against real redis-server processes started by tests/plugins/redis_servers.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from semantic_llm_cache import CacheBackendError, CacheEntry, ConfigurationError, Scope, SemanticCache
from semantic_llm_cache.backends.redis import RedisBackend, namespace_tag
from semantic_llm_cache.backends.redis.replica import ClientReplica
from semantic_llm_cache.serialization import vector_from_bytes
from tests.fakes import BagOfWordsEmbedder, unit
from tests.plugins.redis_servers import (
    RedisClusterServers,
    RedisServer,
    fresh_backend,
    start_plain_server,
    unique_prefix,
)

pytestmark = pytest.mark.redis

P1, P2 = "a" * 32, "b" * 32
DIMENSION = 8


def entry(prompt: str, vector: list[float] | None, partition: str = P1, **fields: Any) -> CacheEntry:
    return CacheEntry(
        prompt=prompt,
        response={"answer": prompt},
        partition_id=partition,
        embedding=None if vector is None else unit(vector),
        embedder="test",
        **fields,
    )


def basis(position: int, mix: float = 0.0, dimension: int = DIMENSION) -> list[float]:
    vector = [0.0] * dimension
    vector[position] = 1.0
    vector[(position + 1) % dimension] += mix
    return vector


@pytest.fixture(params=["client", "search"])
async def mode_backend(request: Any) -> AsyncIterator[RedisBackend]:
    """A backend in each index mode: client mode on plain Redis 7, search mode on Redis 8 with search."""
    fixture = "redis_plain_server" if request.param == "client" else "redis_search_server"
    server: RedisServer = request.getfixturevalue(fixture)
    async with fresh_backend(server.url, index=request.param) as backend:
        yield backend


@pytest.fixture(params=["client", "search", "cluster"])
async def every_backend(request: Any) -> AsyncIterator[RedisBackend]:
    """mode_backend's two, and client mode on the Redis Cluster."""
    fixture = {"client": "redis_plain_server", "search": "redis_search_server", "cluster": "redis_cluster"}
    server: RedisServer | RedisClusterServers = request.getfixturevalue(fixture[request.param])
    async with fresh_backend(server.url, index="search" if request.param == "search" else "client") as backend:
        yield backend


async def test_entry_is_a_hash_with_json_payload_and_float32_vector(redis_plain_server: RedisServer) -> None:
    async with fresh_backend(redis_plain_server.url) as backend:
        stored = entry("hello", basis(0), namespace="tenant ä", metadata={"k": [1, 2]}, tokens=3)
        await backend.set(f"{P1}:d1", stored)
        with redis_plain_server.client() as raw:
            redis_key = f"{backend.prefix}e:{{{P1}}}:d1"
            assert raw.type(redis_key) == b"hash"
            fields = raw.hgetall(redis_key)
            assert set(fields) == {b"s", b"j", b"v8"}
            assert fields[b"s"] == f"{P1},{namespace_tag('tenant ä')}".encode()
            payload = json.loads(fields[b"j"])
            assert payload["prompt"] == "hello" and payload["metadata"] == {"k": [1, 2]} and payload["tokens"] == 3
            assert stored.embedding is not None
            np.testing.assert_array_equal(vector_from_bytes(fields[b"v8"], DIMENSION), stored.embedding)
            assert raw.type(f"{backend.prefix}log:{{{P1}}}") == b"stream"
            assert raw.ttl(redis_key) == -1  # no expiry asked, none set


async def test_ttl_is_redis_expire_and_survives_hits_and_rewrites(redis_plain_server: RedisServer) -> None:
    """The seed lost the TTL when it rewrote an entry on read; here hits, feedback and lookups all keep it."""
    async with fresh_backend(redis_plain_server.url) as backend:
        embedder = BagOfWordsEmbedder()
        async with SemanticCache(backend=backend, embedder=embedder, threshold=0.8, ttl=300, on_error="raise") as cache:
            key = await cache.store("what is the boiling point of water", {"answer": "100 C"})
            assert key is not None
            partition, digest = key.split(":")
            redis_key = f"{backend.prefix}e:{{{partition}}}:{digest}"
            with redis_plain_server.client() as raw:
                first_ttl = raw.pttl(redis_key)
                assert 295_000 < first_ttl <= 300_000
                hit = await cache.lookup("what is the boiling point of water")
                semantic = await cache.lookup("what is the boiling point of the water")
                assert hit is not None and hit.kind == "exact"
                assert semantic is not None and semantic.kind == "semantic"
                await cache.feedback(semantic, correct=False)  # get + set of the same entry
                await backend.record_hit(key)
                assert 0 < raw.pttl(redis_key) <= first_ttl
                hits_key = f"{backend.prefix}h:{{{partition}}}:{digest}"  # counters beside the indexed hash
                assert 0 < raw.pttl(hits_key) <= raw.pttl(redis_key) + 5 and set(raw.hkeys(redis_key)) == {
                    b"s",
                    b"j",
                    b"v64",
                }
                stored = await backend.get(key)
                assert stored is not None and stored.hits == 3 and stored.min_similarity > 0
                assert stored.expires_at is not None and abs(stored.expires_at - (stored.created_at + 300)) < 1e-3
                assert await backend.get(f"{P1}:gone") is None
                await backend.record_hit(f"{P1}:gone")  # must not create a hash without a TTL
                assert not raw.exists(f"{backend.prefix}e:{{{P1}}}:gone")


async def test_expired_entry_leaves_the_search_index_by_itself(redis_search_server: RedisServer) -> None:
    async with fresh_backend(redis_search_server.url, index="search") as backend:
        await backend.set(f"{P1}:short", entry("short", basis(0), expires_at=time.time() + 0.5))
        await backend.set(f"{P1}:long", entry("long", basis(1)))
        with redis_search_server.client() as raw:
            index = f"{backend.prefix}idx:1:{DIMENSION}"
            assert int(raw.ft(index).info()["num_docs"]) == 2
            deadline = time.monotonic() + 10
            while int(raw.ft(index).info()["num_docs"]) != 1 and time.monotonic() < deadline:
                raw.exists(f"{backend.prefix}e:{{{P1}}}:short")  # expiry is lazy as well as active
                await asyncio.sleep(0.1)
            assert int(raw.ft(index).info()["num_docs"]) == 1


async def test_auto_mode_picks_search_when_the_server_has_it(
    redis_plain_server: RedisServer, redis_search_server: RedisServer, redis_cluster: RedisClusterServers
) -> None:
    for url, expected, cluster in (
        (redis_plain_server.url, "client", False),
        (redis_search_server.url, "search", False),
        (redis_cluster.url, "client", True),
    ):
        async with fresh_backend(url) as backend:
            await backend.set(f"{P1}:k", entry("k", basis(0)))
            stats = await backend.get_stats()
            assert stats["index"] == expected and stats["index_requested"] == "auto"
            assert stats["cluster"] is cluster and stats["size"] == 1


async def test_search_mode_is_refused_where_it_cannot_work(
    redis_plain_server: RedisServer, redis_cluster: RedisClusterServers
) -> None:
    for url in (redis_plain_server.url, redis_cluster.url):
        backend = RedisBackend(url, prefix=unique_prefix(), index="search")
        with pytest.raises(ConfigurationError, match="search"):
            await backend.get(f"{P1}:k")
        await backend.close()


async def test_partition_shares_one_cluster_slot_and_partitions_spread(redis_cluster: RedisClusterServers) -> None:
    async with fresh_backend(redis_cluster.url) as backend:
        partitions = [f"{number:032x}" for number in range(40)]
        for partition in partitions:
            for name in ("x", "y"):
                await backend.set(f"{partition}:{name}", entry(name, basis(0), partition=partition))
        with redis_cluster.nodes[0].client() as raw:
            for partition in partitions[:5]:
                slots = {
                    raw.cluster("keyslot", key)
                    for key in (
                        f"{backend.prefix}e:{{{partition}}}:x",
                        f"{backend.prefix}e:{{{partition}}}:y",
                        f"{backend.prefix}log:{{{partition}}}",
                    )
                }
                assert len(slots) == 1
        nodes_used = 0
        for node in redis_cluster.nodes:
            with node.client() as raw:
                nodes_used += bool(list(raw.scan_iter(match=f"{backend.prefix}e:*", count=1000)))
        assert nodes_used >= 2
        assert (await backend.get_stats())["size"] == 80
        for partition in partitions:
            match = await backend.find_similar(unit(basis(0)), 0.99, partition=partition)
            assert match is not None and match[1].partition_id == partition


async def test_no_keys_command_and_lookups_are_pipelined(redis_plain_server: RedisServer) -> None:
    with redis_plain_server.client() as raw:
        raw.config_resetstat()
    async with fresh_backend(redis_plain_server.url, index="client") as backend:
        for number in range(30):
            await backend.set(f"{P1}:k{number}", entry(f"k{number}", basis(number % DIMENSION, mix=number / 30)))
        await backend.find_nearest(unit(basis(0)), 0.1, 3, partition=P1)  # first search builds the local index
        with redis_plain_server.client() as raw:
            before = raw.info("stats")["total_commands_processed"]
            calls_before = raw.info("commandstats").get("cmdstat_xrange", {}).get("calls", 0)
        for _ in range(10):
            assert len(await backend.find_nearest(unit(basis(0)), 0.1, 3, partition=P1)) == 3
        with redis_plain_server.client() as raw:
            stats = raw.info("commandstats")
            assert "cmdstat_keys" not in stats
            # steady state: per search one XRANGE for the log delta plus one HGETALL per candidate, in one pipeline
            assert stats["cmdstat_xrange"]["calls"] - calls_before == 10
            assert raw.info("stats")["total_commands_processed"] - before <= 10 * (1 + 5) + 5  # + our INFO calls
        await backend.iterate()
        await backend.clear("default")
        await backend.get_stats()
        with redis_plain_server.client() as raw:
            assert "cmdstat_keys" not in raw.info("commandstats")


async def test_client_mode_follows_another_process_writes_through_the_changelog(
    redis_plain_server: RedisServer,
) -> None:
    async with fresh_backend(redis_plain_server.url, index="client") as writer:
        reader = RedisBackend(redis_plain_server.url, prefix=writer.prefix, index="client")
        try:
            assert await reader.find_similar(unit(basis(0)), 0.5, partition=P1) is None  # no log yet
            await writer.set(f"{P1}:one", entry("one", basis(0)))
            match = await reader.find_similar(unit(basis(0)), 0.9, partition=P1)
            assert match is not None and match[0] == f"{P1}:one"
            await writer.set(f"{P1}:one", entry("one moved", basis(3)))  # overwrite moves the vector
            assert await reader.find_similar(unit(basis(0)), 0.9, partition=P1) is None
            match = await reader.find_similar(unit(basis(3)), 0.9, partition=P1)
            assert match is not None and match[1].prompt == "one moved"
            await writer.delete(f"{P1}:one")
            assert await reader.find_similar(unit(basis(3)), 0.5, partition=P1) is None
            stats = await reader.get_stats()
            assert stats["resyncs"] == 0 and stats["log_records_applied"] >= 2 and stats["local_vectors"] == 0
            await writer.set(f"{P1}:two", entry("two", basis(2)))
            await writer.clear()  # deletes the log too: the reader starts over
            assert await reader.find_similar(unit(basis(2)), 0.5, partition=P1) is None
            await writer.set(f"{P1}:three", entry("three", basis(4)))
            match = await reader.find_similar(unit(basis(4)), 0.9, partition=P1)
            assert match is not None and match[0] == f"{P1}:three"
        finally:
            await reader.close()


@pytest.mark.parametrize("fixture", ["redis_plain_server", "redis_cluster"])
async def test_client_whose_position_was_trimmed_resyncs_with_scan(request: Any, fixture: str) -> None:
    server = request.getfixturevalue(fixture)
    async with fresh_backend(server.url, index="client", log_length=20) as writer:
        reader = RedisBackend(server.url, prefix=writer.prefix, index="client")
        try:
            await writer.set(f"{P1}:first", entry("first", basis(0)))
            assert await reader.find_similar(unit(basis(0)), 0.9, partition=P1) is not None
            rng = np.random.default_rng(3)
            vectors = rng.standard_normal((400, DIMENSION))
            for number in range(400):  # far past the log's length: the reader's position is trimmed away
                await writer.set(f"{P1}:n{number}", entry(f"n{number}", list(vectors[number])))
            await writer.delete(f"{P1}:first")
            connection = await writer.connection.client()  # routes by slot on a cluster
            assert 0 < await connection.xlen(f"{writer.prefix}log:{{{P1}}}") < 400
            for number in (0, 199, 399):
                match = await reader.find_similar(unit(list(vectors[number])), 0.999, partition=P1)
                assert match is not None and match[0] == f"{P1}:n{number}"
            assert await reader.find_similar(unit(basis(0)), 0.999, partition=P1) is None
            stats = await reader.get_stats()
            assert stats["resyncs"] == 1 and stats["local_vectors"] == 400
            late = RedisBackend(server.url, prefix=writer.prefix, index="client")
            try:  # a newcomer also starts by SCAN when the log no longer holds the whole history
                assert await late.find_similar(unit(list(vectors[7])), 0.999, partition=P1) is not None
                assert (await late.get_stats())["resyncs"] == 1
            finally:
                await late.close()
        finally:
            await reader.close()


async def test_newcomer_replays_a_complete_log_without_scanning(redis_plain_server: RedisServer) -> None:
    async with fresh_backend(redis_plain_server.url, index="client") as writer:
        for number in range(50):
            await writer.set(f"{P1}:n{number}", entry(f"n{number}", basis(number % DIMENSION, mix=number / 50)))
        await writer.delete(f"{P1}:n0")
        reader = RedisBackend(redis_plain_server.url, prefix=writer.prefix, index="client")
        try:
            matches = await reader.find_nearest(unit(basis(0)), 0.0, 100, partition=P1)
            assert len(matches) == 49 and f"{P1}:n0" not in {key for key, _, _ in matches}
            stats = await reader.get_stats()
            assert stats["log_replays"] == 1 and stats["resyncs"] == 0
        finally:
            await reader.close()


async def test_client_mode_drops_an_entry_gone_from_redis_and_tries_the_next(redis_plain_server: RedisServer) -> None:
    async with fresh_backend(redis_plain_server.url, index="client") as backend:
        await backend.set(f"{P1}:best", entry("best", basis(0), expires_at=time.time() + 0.4))
        await backend.set(f"{P1}:second", entry("second", basis(0, mix=0.3)))
        await backend.set(f"{P1}:evicted", entry("evicted", basis(0, mix=0.1)))
        assert (await backend.find_nearest(unit(basis(0)), 0.5, 3, partition=P1))[0][0] == f"{P1}:best"
        with redis_plain_server.client() as raw:  # as eviction would: gone without a log record
            raw.delete(f"{backend.prefix}e:{{{P1}}}:evicted")
        await asyncio.sleep(0.5)
        match = await backend.find_similar(unit(basis(0)), 0.5, partition=P1)
        assert match is not None and match[0] == f"{P1}:second"
        stats = await backend.get_stats()
        assert stats["stale_dropped"] >= 1 and stats["local_vectors"] == 1


@pytest.mark.parametrize("where", ["entry", "log"])
async def test_corrupt_and_foreign_data_is_skipped_and_counted(mode_backend: RedisBackend, where: str) -> None:
    backend = mode_backend
    good_vector = unit(basis(0, mix=0.5))
    await backend.set(f"{P1}:good", entry("good", basis(0, mix=0.5)))
    await backend.set(f"{P1}:first", entry("first", basis(0)))  # the local index knows it; it is spoiled below
    assert (await backend.find_similar(unit(basis(0)), 0.5, partition=P1)) is not None
    assert backend.connection.url is not None
    client = aioredis.Redis.from_url(backend.connection.url)
    prefix = backend.prefix
    exact = np.asarray(unit(basis(0)), dtype="<f4").tobytes()
    try:
        if where == "entry":
            await client.set(f"{prefix}e:{{{P1}}}:string", b"\xff\x00garbage")
            await client.hset(f"{prefix}e:{{{P1}}}:json", mapping={"s": P1, "j": b"\xff{", "v8": exact})
            await client.hset(f"{prefix}e:{{{P1}}}:type", mapping={"s": P1, "j": "[1]", "v8": exact})
            bad_time = json.dumps({"prompt": "p", "response": 1, "created_at": "yesterday"})
            await client.hset(f"{prefix}e:{{{P1}}}:hits", mapping={"s": P1, "j": bad_time, "v8": exact})
            await client.set(f"{prefix}h:{{{P1}}}:good", b"not a hash of counters")
            await client.hset(f"{prefix}e:{{{P1}}}:short", mapping={"s": P1, "j": "{}", "v8": exact[:12]})
            await client.hset(f"{prefix}e:{{{P1}}}:first", "v8", exact[:-4])  # wrong length under a real entry
            await client.hset(f"{prefix}e:{{{P1}}}:nan", mapping={"s": P1, "j": "{}", "v8": b"\xff\xff\xff\x7f" * 8})
            await client.hset(f"{prefix}e:{{{P2}}}:wall", mapping={"s": P1, "j": "{}", "v8": exact})
            await client.set(f"{prefix}e:{{{P1}:broken-key", b"x")
        else:
            await client.xadd(f"{prefix}log:{{{P1}}}", {"o": "s"})  # no key
            await client.xadd(f"{prefix}log:{{{P1}}}", {"o": "?", "k": "x"})
            await client.xadd(f"{prefix}log:{{{P1}}}", {"o": "s", "k": "string"})
            await client.set(f"{prefix}e:{{{P1}}}:string", b"\xff\x00garbage")
        for key in (f"{P1}:string", f"{P1}:json", f"{P1}:type", f"{P1}:hits", f"{P1}:short", f"{P1}:nan"):
            assert await backend.get(key) is None
        expected = [f"{P1}:good"] if where == "entry" else [f"{P1}:first", f"{P1}:good"]  # "first" was spoiled
        match = await backend.find_similar(unit(basis(0)), 0.1, partition=P1)
        assert match is not None and match[0] == expected[0] and match[1].embedding is not None
        if where == "entry":
            assert float(np.dot(match[1].embedding, good_vector)) > 0.999
        assert [key for key, _, _ in await backend.find_nearest(unit(basis(0)), 0.0, 10)] == expected
        assert sorted(key for key, _ in await backend.iterate()) == sorted(expected)
        stats = await backend.get_stats()
        assert stats["corrupt_skipped"] > 0
        if where == "log":  # a log that is not a stream at all is repaired by the next write
            await client.delete(f"{prefix}log:{{{P1}}}")
            await client.set(f"{prefix}log:{{{P1}}}", b"not a stream")
            assert (await backend.find_similar(unit(basis(0)), 0.1, partition=P1)) is not None
            await backend.set(f"{P1}:after", entry("after", basis(5)))
            assert await client.type(f"{prefix}log:{{{P1}}}") == b"stream"
            assert (await backend.find_similar(unit(basis(5)), 0.99, partition=P1)) is not None
    finally:
        await client.aclose()


async def test_url_with_password_and_database(tmp_path: Path) -> None:
    server = start_plain_server(tmp_path / "auth", "--requirepass", "s3cret word")
    try:
        url = f"redis://:s3cret%20word@127.0.0.1:{server.port}/3?prefix=app1:&index=client"
        async with RedisBackend(url) as backend:
            assert backend.prefix == "app1:" and backend.index_requested == "client"
            await backend.set(f"{P1}:k", entry("k", basis(0)))
            assert (await backend.find_similar(unit(basis(0)), 0.9, partition=P1)) is not None
        with server.client(password="s3cret word", db=3) as raw:
            assert raw.exists(f"app1:e:{{{P1}}}:k")
        with server.client(password="s3cret word", db=0) as raw:
            assert raw.dbsize() == 0
        async with RedisBackend(f"redis://:wrong@127.0.0.1:{server.port}/0") as backend:
            with pytest.raises(CacheBackendError):
                await backend.get(f"{P1}:k")
    finally:
        server.stop()


@pytest.fixture
def tls_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1."""
    certificate, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True,
    )  # fmt: skip
    return certificate, key


async def test_tls_url(tmp_path: Path, tls_certificate: tuple[Path, Path]) -> None:
    certificate, key = tls_certificate
    from tests.plugins.redis_servers import free_port, plain_server_binary

    port = free_port()
    server = RedisServer(
        plain_server_binary(),
        tmp_path / "tls",
        port=free_port(),
        extra_args=["--tls-port", str(port), "--tls-cert-file", str(certificate), "--tls-key-file", str(key),
                    "--tls-ca-cert-file", str(certificate), "--tls-auth-clients", "no"],
    ).start()  # fmt: skip
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certificate}"
        async with RedisBackend(url, prefix=unique_prefix(), index="client") as backend:
            await backend.set(f"{P1}:k", entry("k", basis(0)))
            got = await backend.get(f"{P1}:k")
            assert got is not None and got.prompt == "k"
    finally:
        server.stop()


async def test_existing_client_is_used_and_left_open(redis_plain_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_plain_server.url)
    try:
        async with RedisBackend(client, prefix=unique_prefix()) as backend:
            await backend.set(f"{P1}:k", entry("k", basis(0)))
            assert await backend.get(f"{P1}:k") is not None
            await backend.destroy()
        assert await client.ping()  # the owner's client is still usable
    finally:
        await client.aclose()
    decoding = aioredis.Redis.from_url(redis_plain_server.url, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisBackend(decoding)
    await decoding.aclose()


def test_bad_options_are_refused_on_construction() -> None:
    with pytest.raises(ConfigurationError):
        RedisBackend("redis://localhost/0", index="vector")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        RedisBackend("http://localhost/0")
    with pytest.raises(ConfigurationError):
        RedisBackend("redis://localhost/0", prefix="a{b}")
    with pytest.raises(ConfigurationError):
        RedisBackend("redis://localhost/0", log_length=0)


async def test_key_and_partition_must_agree(redis_plain_server: RedisServer) -> None:
    async with fresh_backend(redis_plain_server.url) as backend:
        with pytest.raises(ValueError):
            await backend.set(f"{P2}:k", entry("k", basis(0), partition=P1))
        with pytest.raises(ValueError):
            await backend.get("no-colon")


async def test_entries_of_two_prefixes_never_meet(redis_search_server: RedisServer) -> None:
    async with (
        fresh_backend(redis_search_server.url) as first,
        fresh_backend(redis_search_server.url) as second,
    ):
        await first.set(f"{P1}:k", entry("k", basis(0)))
        assert await second.find_similar(unit(basis(0)), 0.5, partition=P1) is None
        assert await second.get(f"{P1}:k") is None
        assert (await second.get_stats())["size"] == 0


async def test_search_finds_the_true_neighbour_in_a_large_and_a_small_partition(
    redis_search_server: RedisServer,
) -> None:
    """The range query pre-filtered by the partition's tag finds the true nearest neighbour, in a large partition
    and in a small one sharing the index."""
    async with fresh_backend(redis_search_server.url, index="search") as backend:
        rng = np.random.default_rng(5)
        large = rng.standard_normal((1500, DIMENSION))
        small = rng.standard_normal((5, DIMENSION))
        writes = [
            backend.set(f"{P1}:n{number}", entry(f"n{number}", list(vector))) for number, vector in enumerate(large)
        ]
        writes += [backend.set(f"{P2}:s{number}", entry(f"s{number}", list(vector), partition=P2))
                   for number, vector in enumerate(small)]  # fmt: skip
        for start in range(0, len(writes), 100):
            await asyncio.gather(*writes[start : start + 100])
        for partition, vectors, name in ((P1, large, "n"), (P2, small, "s")):
            for position in (0, len(vectors) - 1):
                query = unit(list(vectors[position] + rng.standard_normal(DIMENSION) * 0.05))
                best = int(np.argmax(np.stack([unit(list(v)) for v in vectors]) @ query))
                match = await backend.find_similar(query, 0.5, partition=partition)
                assert match is not None and match[0] == f"{partition}:{name}{best}"


async def test_one_backend_serves_several_event_loops(redis_plain_server: RedisServer) -> None:
    """The sync wrappers run the cache on a background loop while the application awaits it on its own."""
    from semantic_llm_cache._sync import run_sync

    async with fresh_backend(redis_plain_server.url, index="client") as backend:
        await backend.set(f"{P1}:k", entry("k", basis(0)))
        from_other_loop = await asyncio.to_thread(run_sync, backend.find_similar(unit(basis(0)), 0.9, partition=P1))
        assert from_other_loop is not None and from_other_loop[0] == f"{P1}:k"
        await asyncio.to_thread(run_sync, backend.set(f"{P1}:j", entry("j", basis(1))))
        match = await backend.find_similar(unit(basis(1)), 0.9, partition=P1)
        assert match is not None and match[0] == f"{P1}:j"


async def test_local_indexes_are_bounded(redis_plain_server: RedisServer) -> None:
    async with fresh_backend(redis_plain_server.url, index="client", local_partitions=3) as backend:
        partitions = [f"{number:032x}" for number in range(6)]
        for partition in partitions:
            await backend.set(f"{partition}:k", entry("k", basis(0), partition=partition))
            assert await backend.find_similar(unit(basis(0)), 0.9, partition=partition) is not None
        assert (await backend.get_stats())["local_partitions"] == 3
        assert await backend.find_similar(unit(basis(0)), 0.9, partition=partitions[0]) is not None  # rebuilt


async def test_client_mode_moves_a_large_local_partition_to_hnsw_and_finds_the_same(
    redis_plain_server: RedisServer,
) -> None:
    from semantic_llm_cache.backends.memory import MemoryBackend
    from semantic_llm_cache.index.auto import AutoIndex

    partition = "c" * 32
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((20, 32))
    vectors = [unit(list(centres[row % 20] + 0.3 * rng.standard_normal(32))) for row in range(300)]
    reference = MemoryBackend(hnsw_min_entries=None)
    async with fresh_backend(redis_plain_server.url, index="client", hnsw_min_entries=50) as backend:
        for row, vector in enumerate(vectors):
            entry = CacheEntry(prompt=f"p{row}", response=row, partition_id=partition, embedding=vector)
            await backend.set(f"{partition}:{row:032x}", entry)
            await reference.set(f"{partition}:{row:032x}", entry)
        await backend.find_similar(vectors[0], 0.99, partition=partition)  # builds the local index
        replica = backend._strategy
        assert isinstance(replica, ClientReplica)
        (state,) = replica.partitions.values()
        assert isinstance(state.index, AutoIndex)
        state.index.wait(timeout=60)
        assert state.index.kind == "hnsw" and len(state.index) == 300
        for row in range(0, 300, 7):
            query = unit(list(vectors[row] + 0.05 * rng.standard_normal(32)))
            got = await backend.find_nearest(query, 0.5, 1, partition=partition)
            want = await reference.find_nearest(query, 0.5, 1, partition=partition)
            assert [key for key, _, _ in got] == [key for key, _, _ in want]


def short_namespace_tag(namespace: str) -> str:
    """The 32-bit namespace tag every entry carried before 128-bit tags (computed here, not imported from the
    backend, so that these tests also run against that older code)."""
    return "n" + hashlib.blake2b(namespace.encode(), digest_size=4).hexdigest()


def colliding_namespaces() -> tuple[str, str]:
    """The first two namespaces "tenant-<n>" whose 32-bit tags collide, by brute force (a birthday search:
    tenant-40387 and tenant-51778, found after 51779 tries)."""
    seen: dict[str, str] = {}
    for number in itertools.count():
        namespace = f"tenant-{number}"
        first = seen.setdefault(short_namespace_tag(namespace), namespace)
        if first != namespace:
            return first, namespace
    raise AssertionError("unreachable")


async def raw_client(backend: RedisBackend) -> Any:
    """A client of the backend's server (a cluster client on a cluster) for writing what older code wrote."""
    assert backend.connection.url is not None
    await backend.get_stats()  # connects: the backend knows whether it is a cluster
    if backend.connection.cluster:
        return RedisCluster.from_url(backend.connection.url)
    return aioredis.Redis.from_url(backend.connection.url)


async def nearest_keys(backend: RedisBackend, namespace: str | None = None, partition: str | None = None) -> set[str]:
    matches = await backend.find_nearest(unit(basis(0)), 0.5, 500, namespace, partition=partition)
    return {key for key, _, _ in matches}


async def test_clear_of_a_namespace_spares_another_whose_short_tag_is_the_same(every_backend: RedisBackend) -> None:
    """The adversarial review: "tenant-40387" and "tenant-51778" shared a 32-bit tag, and clearing one deleted the
    other's entries. Now the tag has 128 bits and clear checks each candidate's own namespace; entries written
    with the old tag (kept here by rewriting `s` as the older code wrote it) are still found and still spared."""
    backend = every_backend
    doomed, kept = colliding_namespaces()
    assert short_namespace_tag(doomed) == short_namespace_tag(kept)
    partitions = [P1, P2, "c" * 32]
    keys: dict[str, set[str]] = {doomed: set(), kept: set(), "other": set()}
    older: set[str] = set()
    client = await raw_client(backend)
    try:
        for partition in partitions:
            for namespace, namespace_keys in keys.items():
                for number in range(3):
                    key = f"{partition}:{namespace}-{number}"
                    await backend.set(key, entry(key, basis(0, mix=number / 10), partition=partition,
                                                 namespace=namespace))  # fmt: skip
                    namespace_keys.add(key)
                exact_only = f"{partition}:{namespace}-exact"  # no vector: not in the search index, still cleared
                await backend.set(exact_only, entry(exact_only, None, partition=partition, namespace=namespace))
                if namespace != "other":  # as the older code wrote it: the 32-bit tag
                    legacy = f"{partition}:{namespace}-legacy"
                    await backend.set(legacy, entry(legacy, basis(0, mix=0.5), partition=partition,
                                                    namespace=namespace))  # fmt: skip
                    await client.hset(f"{backend.prefix}e:{{{partition}}}:{namespace}-legacy", "s",
                                      f"{partition},{short_namespace_tag(namespace)}")  # fmt: skip
                    namespace_keys.add(legacy)
                    older.add(legacy)
        for namespace in (doomed, kept):  # the short tag selects both tenants' older entries: only one's are served
            assert await nearest_keys(backend, namespace) == keys[namespace]
            for partition in partitions:
                in_partition = {key for key in keys[namespace] if key.startswith(partition)}
                assert await nearest_keys(backend, namespace, partition) == in_partition
        assert {key for key, _ in await backend.iterate(kept)} == keys[kept] | {f"{p}:{kept}-exact" for p in partitions}

        await backend.record_hit(f"{P1}:{doomed}-0")  # counters of its own, deleted with the entry
        await backend.record_hit(f"{P1}:{kept}-0")
        await backend.clear(doomed)

        for namespace in (kept, "other"):
            exact_keys = {f"{partition}:{namespace}-exact" for partition in partitions}
            for key in keys[namespace] | exact_keys:
                got = await backend.get(key)
                assert got is not None and got.namespace == namespace, key
            assert {key for key, _ in await backend.iterate(namespace)} == keys[namespace] | exact_keys
            assert await nearest_keys(backend, namespace) == keys[namespace]
        for key in keys[doomed] | {f"{partition}:{doomed}-exact" for partition in partitions}:
            assert await backend.get(key) is None, key
        assert await backend.iterate(doomed) == []
        for partition in partitions:  # the local index follows the deletes through the changelog
            expected = {key for key in keys[kept] | keys["other"] if key.startswith(partition)}
            assert await nearest_keys(backend, partition=partition) == expected
        assert (await backend.get_stats())["size"] == len(keys[kept]) + len(keys["other"]) + 2 * len(partitions)
        assert not await client.exists(f"{backend.prefix}h:{{{P1}}}:{doomed}-0")
        spared = await backend.get(f"{P1}:{kept}-0")
        assert spared is not None and spared.hits == 1
        for key in older:  # the older entries of the spared tenant are still there, as written
            partition, digest = key.split(":")
            stored = await client.hget(f"{backend.prefix}e:{{{partition}}}:{digest}", "s")
            assert (stored is None) == key.endswith(f"{doomed}-legacy"), key
    finally:
        await client.aclose()


# Partition ids the backend accepts (any non-empty text without braces, commas or colons), chosen to break a query
# string or to meet as TAG values: the search module trims whitespace and cuts at a NUL, so " a", "a " and "a"
# or "nul\x00x" and "nul" would share one.
ODD_PARTITIONS = [
    "a", " a", "a ", "nul", "nul\x00x", "\x00", " ", "\t\n", "a b", "a\tb", "a|b", "(a)", "-", "-a", "*", "x*",
    "$p0", "$n0", "@s", "\\", "\\)", "|@*-$()[]~!^%&=+<>?/\\\"'#;.`", "ünïcødé 中文 😀", "e\u0301", "\u00e9",
    short_namespace_tag("tenant-40387"), "A" * 200, "a" * 200,
]  # fmt: skip
ODD_NAMESPACES = [
    "{}|@*-", " spaced ", "spaced", "nul\x00byte", "nul", "ünï 😀", "$n0", "$p0", "a,b", "x:y", "\\", "*", ",",
    "@s:{x}", "tab\t", "default", "n:" + "0" * 32,
]  # fmt: skip


async def test_any_partition_and_namespace_text_works_and_stays_apart(every_backend: RedisBackend) -> None:
    """The adversarial review: in search mode a partition id or namespace with a NUL byte (or other special
    characters) made the query a syntax error. The backend is called directly here, with ids the engine would
    never make (it hashes partitions to hex): every operation works and keeps partitions and namespaces apart."""
    backend = every_backend
    where: dict[str, tuple[str, str]] = {}  # key -> (partition, namespace)
    for number, partition in enumerate(ODD_PARTITIONS):
        for offset, suffix in ((0, "a"), (1, "b")):
            namespace = ODD_NAMESPACES[(number + offset) % len(ODD_NAMESPACES)]
            key = f"{partition}:d{number}{suffix}"
            await backend.set(key, entry(key, basis(0, mix=offset / 10), partition=partition, namespace=namespace))
            where[key] = (partition, namespace)

    def keys_of(partition: str | None = None, namespace: str | None = None) -> set[str]:
        return {key for key, (p, n) in where.items() if partition in (None, p) and namespace in (None, n)}

    for key, (partition, namespace) in where.items():
        got = await backend.get(key)
        assert got is not None and (got.prompt, got.partition_id, got.namespace) == (key, partition, namespace)
    for partition in ODD_PARTITIONS:
        assert await nearest_keys(backend, partition=partition) == keys_of(partition), repr(partition)
        match = await backend.find_similar(unit(basis(0)), 0.5, partition=partition)
        assert match is not None and match[0] == f"{partition}:d{ODD_PARTITIONS.index(partition)}a"
        for namespace in {where[key][1] for key in keys_of(partition)}:
            assert await nearest_keys(backend, namespace, partition) == keys_of(partition, namespace)
        assert await nearest_keys(backend, "not-there", partition) == set()
    # Without a partition (the engine always gives one) search mode asks the search module, which does not index
    # a key with a NUL byte: those entries are found by partition only (through the changelog, as in client mode).
    unindexed = {key for key, (partition, _) in where.items() if "\x00" in partition and backend.mode == "search"}
    for namespace in ODD_NAMESPACES:
        assert await nearest_keys(backend, namespace) == keys_of(namespace=namespace) - unindexed, repr(namespace)
        assert {key for key, _ in await backend.iterate(namespace)} == keys_of(namespace=namespace)
    assert await nearest_keys(backend) == set(where) - unindexed

    cleared = ODD_NAMESPACES[0]
    await backend.clear(cleared)
    for key, (_, namespace) in where.items():
        assert (await backend.get(key) is None) == (namespace == cleared), key
    survivors = set(where) - keys_of(namespace=cleared)
    for partition in ODD_PARTITIONS:
        assert await nearest_keys(backend, partition=partition) == keys_of(partition) & survivors, repr(partition)
    assert {key for key, _ in await backend.iterate()} == survivors
    nul_key = next(iter(keys_of("nul\x00x") & survivors))
    await backend.record_hit(nul_key)
    got = await backend.get(nul_key)
    assert got is not None and got.hits == 1
    assert await backend.delete(nul_key) and await backend.get(nul_key) is None
    assert await backend.get(next(iter(keys_of("nul") & survivors))) is not None


async def test_the_engine_with_odd_namespaces(mode_backend: RedisBackend) -> None:
    embedder = BagOfWordsEmbedder()
    async with SemanticCache(backend=mode_backend, embedder=embedder, threshold=0.8, on_error="raise") as cache:
        scopes = [Scope(namespace=namespace) for namespace in ("nul\x00 {}|@*-", "nul", " x ", "tenant-40387",
                                                               "tenant-51778")]  # fmt: skip
        for scope in scopes:
            await cache.store("what is the boiling point of water", f"answer for {scope.namespace!r}", scope)
        for scope in scopes:
            hit = await cache.lookup("what is the boiling point of the water", scope)
            assert hit is not None and hit.kind == "semantic" and hit.response == f"answer for {scope.namespace!r}"
        await cache.clear(scopes[0].namespace)
        await cache.clear("tenant-40387")
        for scope in scopes:
            hit = await cache.lookup("what is the boiling point of water", scope)
            assert (hit is None) == (scope.namespace in (scopes[0].namespace, "tenant-40387")), scope


async def test_older_entries_of_odd_partitions_stay_found(mode_backend: RedisBackend) -> None:
    """Before digests, `s` held any partition id as it is (and the 32-bit namespace tag): such entries, written
    by the older code, are still searched, read and cleared (those it could find: no NUL, no outer spaces)."""
    backend = mode_backend
    partitions = ["a b", "a|b", "ünï 中文", "|@*-$()[]~!", "x*"]
    client = await raw_client(backend)
    try:
        for number, partition in enumerate(partitions):
            for namespace in ("t1", "t2"):
                key = f"{partition}:{namespace}"
                await backend.set(key, entry(key, basis(0, mix=number / 10), partition=partition, namespace=namespace))
                await client.hset(f"{backend.prefix}e:{{{partition}}}:{namespace}", "s",
                                  f"{partition},{short_namespace_tag(namespace)}")  # fmt: skip
        for partition in partitions:
            assert await nearest_keys(backend, partition=partition) == {f"{partition}:t1", f"{partition}:t2"}
            assert await nearest_keys(backend, "t1", partition) == {f"{partition}:t1"}
            got = await backend.get(f"{partition}:t2")
            assert got is not None and got.namespace == "t2"
        await backend.clear("t1")
        assert {key for key, _ in await backend.iterate()} == {f"{partition}:t2" for partition in partitions}
    finally:
        await client.aclose()


def test_the_old_name_local_hnsw_threshold_still_works_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="hnsw_min_entries"):
        RedisBackend("redis://localhost:6379/0", index="client", local_hnsw_threshold=None)


def test_the_backend_breaker_options_are_deprecated_the_engine_breaker_guards_every_call() -> None:
    with pytest.warns(DeprecationWarning, match="engine's circuit breaker"):
        RedisBackend("redis://localhost:6379/0", breaker_failures=3, breaker_cooldown=2.0)
