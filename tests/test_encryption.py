"""Answers encrypted at rest (#19): no plaintext in the raw storage of any backend, rotation, wrong keys miss."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import pytest

from semantic_llm_cache import ConfigurationError, Scope, SemanticCache
from semantic_llm_cache.backends.sqlite import SQLiteBackend
from semantic_llm_cache.storage import StorageBackend
from tests.fakes import BagOfWordsEmbedder

PROMPT = "What is the account number of Jane Roe?"
ANSWER = "Jane Roe's account is 4412-ZETA-0099."
# Phrases of the prompt, the answer and the metadata that plaintext would hold. Each has a space, an apostrophe or is
# long: the base64 ciphertext (fresh each run) could hold a short word like "Roe" by chance (about 1 run in 1,000).
SECRET_WORDS = ("Jane Roe", "Roe's", "4412-ZETA-0099", "account number", "customer-notes")


def new_key() -> str:
    return secrets.token_urlsafe(32)


def encrypted_cache(backend: StorageBackend, *keys: str) -> SemanticCache:
    return SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.8, encryption_key=list(keys))


async def test_every_backend_serves_encrypted_entries_and_stores_no_plaintext(backend: StorageBackend) -> None:
    key = new_key()
    cache = encrypted_cache(backend, key)
    assert await cache.store(PROMPT, ANSWER, metadata={"source": "customer-notes"})
    exact = await cache.lookup(PROMPT)
    semantic = await cache.lookup("what is the account number of jane roe")
    assert exact is not None and exact.response == ANSWER and exact.metadata == {"source": "customer-notes"}
    assert semantic is not None and semantic.kind == "semantic" and semantic.prompt == PROMPT
    for _, entry in await backend.iterate():  # what the backend holds, as it holds it
        stored = repr((entry.prompt, entry.response, entry.metadata))
        assert not any(word in stored for word in SECRET_WORDS), stored


async def test_raw_sqlite_rows_hold_no_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    async with encrypted_cache(SQLiteBackend(path), new_key()) as cache:
        await cache.store(PROMPT, ANSWER, metadata={"source": "customer-notes"})
    rows = sqlite3.connect(path).execute("SELECT * FROM entries").fetchall()
    assert rows
    dump = repr(rows)
    assert not any(word in dump for word in SECRET_WORDS)


@pytest.mark.redis
@pytest.mark.parametrize("server", ["redis_plain_server", "redis_search_server"])
async def test_raw_redis_hashes_hold_no_plaintext(server: str, request: pytest.FixtureRequest) -> None:
    from tests.plugins.redis_servers import fresh_backend

    redis_server = request.getfixturevalue(server)
    async with fresh_backend(redis_server.url) as backend:
        cache = encrypted_cache(backend, new_key())
        await cache.store(PROMPT, ANSWER, metadata={"source": "customer-notes"})
        assert (await cache.lookup(PROMPT) or object()).response == ANSWER  # type: ignore[attr-defined]
        client = redis_server.client()
        raw = [client.hgetall(name) for name in client.scan_iter(f"{backend.prefix}*") if client.type(name) == b"hash"]
        dump = repr(raw)
        assert raw and not any(word.encode() in dump.encode() for word in SECRET_WORDS)


async def test_rotation_old_entries_read_while_the_new_key_writes(backend: StorageBackend) -> None:
    old, new = new_key(), new_key()
    await encrypted_cache(backend, old).store(PROMPT, ANSWER)
    rotated = encrypted_cache(backend, new, old)
    assert (await rotated.lookup(PROMPT) or object()).response == ANSWER  # type: ignore[attr-defined]
    await rotated.store("What is the refund policy?", "30 days")
    only_new = encrypted_cache(backend, new)
    assert (await only_new.lookup("What is the refund policy?") or object()).response == "30 days"  # type: ignore[attr-defined]
    assert await only_new.lookup(PROMPT) is None  # written under the retired key: a miss, never garbage
    assert only_new.stats["unreadable_entries"] >= 1


async def test_a_wrong_or_missing_key_is_a_counted_miss(backend: StorageBackend) -> None:
    await encrypted_cache(backend, new_key()).store(PROMPT, ANSWER)
    stranger = encrypted_cache(backend, new_key())
    plain = SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.8)
    for cache in (stranger, plain):
        assert await cache.lookup(PROMPT) is None
        assert await cache.lookup("what is the account number of jane roe") is None
        assert cache.stats["unreadable_entries"] >= 1 and cache.stats["errors"] == 0


async def test_a_plaintext_entry_is_not_served_by_an_encrypting_cache(backend: StorageBackend) -> None:
    await SemanticCache(backend=backend, embedder=BagOfWordsEmbedder()).store(PROMPT, "planted answer")
    assert await encrypted_cache(backend, new_key()).lookup(PROMPT) is None


async def test_a_sealed_answer_moved_to_another_tenants_key_does_not_open(backend: StorageBackend) -> None:
    key = new_key()
    cache = encrypted_cache(backend, key)
    stored_key = await cache.store(PROMPT, ANSWER, Scope(namespace="tenant-a"))
    other_key = await cache.store(PROMPT, "tenant b's answer", Scope(namespace="tenant-b"))
    assert stored_key and other_key
    sealed = await backend.get(stored_key)
    assert sealed is not None
    await backend.set(other_key, sealed.__class__(**{**sealed.__dict__, "partition_id": other_key.split(":")[0]}))
    assert await cache.lookup(PROMPT, Scope(namespace="tenant-b")) is None  # bound to tenant a's key


def test_keys_are_checked_when_the_cache_is_built() -> None:
    with pytest.raises(ConfigurationError, match="32 random bytes"):
        SemanticCache(embedder=BagOfWordsEmbedder(), encryption_key="too short")
    with pytest.raises(ConfigurationError, match="at least one key"):
        SemanticCache(embedder=BagOfWordsEmbedder(), encryption_key=[])
    SemanticCache(embedder=BagOfWordsEmbedder(), encryption_key=secrets.token_bytes(32))
    SemanticCache(embedder=BagOfWordsEmbedder(), encryption_key=secrets.token_hex(32))
