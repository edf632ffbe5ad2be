"""Crash safety of the SQLite backend: SIGKILL a writing process at random moments, then reopen the file.

A child process stores entries one after another (some replacing earlier ones, some recording hits) and prints
each key only after its `set` returned. The parent kills it at a random moment, then checks that the file passes
`PRAGMA integrity_check` and that every printed key is there with its exact content. The same file is reused
across rounds, so each round also recovers the write-ahead log the previous kill left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from semantic_llm_cache.backends.sqlite import SQLiteBackend
from tests.fakes import unit

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

ROUNDS = 22
DIMENSION = 32
PARTITION = "d" * 32

CHILD = r"""
import asyncio, hashlib, sys
import numpy as np
from semantic_llm_cache.backends.sqlite import SQLiteBackend
from semantic_llm_cache.config import CacheEntry

path, round_number, partition, dimension = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def vector(name):
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dimension)

async def main():
    backend = SQLiteBackend(path)
    print("ready", flush=True)
    number = 0
    while True:
        key = f"{partition}:r{round_number}-{number}"
        entry = CacheEntry(prompt=f"prompt {key}", response={"key": key, "filler": "x" * (number % 50)},
                           partition_id=partition, embedding=vector(key), embedder="durability",
                           metadata={"round": round_number, "number": number})
        await backend.set(key, entry)
        print(key, flush=True)
        if number % 5 == 4:
            await backend.record_hit(key)
        number += 1

asyncio.run(main())
"""


def expected_vector(key: str) -> np.ndarray:
    """The vector the child stored under `key` (the same seeded draw)."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return unit(list(np.random.default_rng(seed).standard_normal(DIMENSION)))


def run_until_killed(path: Path, round_number: int, rng: random.Random) -> tuple[list[str], bool]:
    """Start a writer, SIGKILL it after a random delay; return the keys it acknowledged and if it was writing."""
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(round_number), PARTITION, str(DIMENSION)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
    )
    assert child.stdout is not None
    ready = child.stdout.readline()
    assert ready == b"ready\n", child.stderr.read() if child.stderr else ready
    time.sleep(rng.uniform(0.02, 0.35))
    still_writing = child.poll() is None
    child.send_signal(signal.SIGKILL)
    output, errors = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, errors.decode()
    lines = output.decode().split("\n")
    # The last piece may be a key cut off mid-print: only complete lines were acknowledged.
    return [line for line in lines[:-1] if line], still_writing


async def test_sigkill_at_random_moments_never_loses_an_acknowledged_store(tmp_path: Path) -> None:
    path = tmp_path / "durable.db"
    rng = random.Random(20240606)
    acknowledged: list[str] = []
    kills_while_writing = 0
    started = time.monotonic()
    for round_number in range(ROUNDS):
        keys, still_writing = await asyncio.to_thread(run_until_killed, path, round_number, rng)
        kills_while_writing += still_writing
        acknowledged.extend(keys)

        connection = sqlite3.connect(path)
        try:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            connection.close()

        backend = SQLiteBackend(path)
        try:
            stored = dict(await backend.iterate())
            missing = [key for key in acknowledged if key not in stored]
            assert not missing, f"round {round_number}: {len(missing)} acknowledged stores lost, e.g. {missing[:3]}"
            for key in keys[-3:] + acknowledged[:1]:  # the newest of this round, and the very first
                entry = stored[key]
                assert entry.prompt == f"prompt {key}" and entry.response["key"] == key
                assert entry.embedding is not None
                np.testing.assert_allclose(entry.embedding, expected_vector(key), atol=1e-6)
            if keys:
                match = await backend.find_similar(expected_vector(keys[-1]), 0.999, partition=PARTITION)
                assert match is not None and match[0] == keys[-1]
            assert (await backend.get_stats())["corrupt_rows"] == 0
        finally:
            await backend.close()
    assert kills_while_writing >= 20, "the child should still have been writing when it was killed"
    assert len(acknowledged) > ROUNDS, "the children should have stored something before each kill"
    assert time.monotonic() - started < 90
