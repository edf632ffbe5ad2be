"""Fuzz the command line: whatever the arguments, URLs and file contents, a run succeeds (exit 0) or prints one
"error:" line and exits 1; it never ends in a traceback. And backend_from_url only ever raises the package's
documented errors.

Generated arguments are ones click accepts: a value click itself refuses (a NUL in a file name, --limit 0) is a
usage error, which click reports its own way (usage, the error in a box, exit code 2), before any command runs.

Everything runs offline: memory:// and sqlite:/// caches in the test's temporary directory (the working
directory during these tests, so relative SQLite paths land there too); a Redis URL is run through the command
line only when backend_from_url refuses it, so no test ever connects to a server.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from semantic_llm_cache.backends.url import backend_from_url, forget_named_memory_backends
from semantic_llm_cache.cli import app, export_line
from semantic_llm_cache.config import CacheEntry
from semantic_llm_cache.errors import SemanticCacheError
from semantic_llm_cache.scope import exact_key, normalize_prompt
from semantic_llm_cache.storage import StorageBackend

FAKE_EMBEDDER = "tests.fakes:BagOfWordsEmbedder"
#: Examples per test; raise it for a deeper run, e.g. SEMANTIC_LLM_CACHE_FUZZ_EXAMPLES=2000.
EXAMPLES = int(os.environ.get("SEMANTIC_LLM_CACHE_FUZZ_EXAMPLES", "30"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- what the runs must look like ------------------------------------------------------------------------


def run(*arguments: str, input: str | None = None) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, list(arguments), input=input)


def assert_clean(result: Result, error_codes: tuple[int, ...] = (1,)) -> None:
    """Exit 0, or exit 1 (or another of `error_codes`) with exactly one "error:" line on stderr; never a traceback
    or an unexpected error."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, *error_codes), (result.exit_code, result.output)
    if result.exit_code in error_codes:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert not lines[0].startswith("error: unexpected "), lines[0]  # the catch-all is for bugs: none here
    # What the runs ended in, for `pytest --hypothesis-show-statistics`: each kind of error, and successes.
    event("ok" if result.exit_code == 0 else re.sub(r"\S*/\S*|'[^']*'|\d+", "_", result.stderr)[:60])


def size_of(url: str) -> int:
    result = run("stats", url, "--json")
    assert result.exit_code == 0, result.output
    return int(json.loads(result.stdout)["size"])


def opens_offline(url: str) -> bool:
    """False for a Redis URL backend_from_url accepts (running it would connect to a server)."""
    try:
        backend = backend_from_url(url)
    except SemanticCacheError:
        return True
    asyncio.run(backend.close())
    return url.split("://", 1)[0].lower() not in ("redis", "rediss")


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    yield
    forget_named_memory_backends()


# -- generated text, JSON, URLs --------------------------------------------------------------------------

SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udcff", "x\udc80"])
texts = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=10),
    SURROGATES,
    st.sampled_from(["", " ", "[/x]", "[bold]", ":smile:", "\x00", "\u2028", "line\nbreak", "%00", "\\", "é" * 3]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(),  # NaN and the infinities included
    texts,
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
# JSON text Python's encoder never writes but files can hold: huge or non-finite numbers, escaped lone
# surrogates, nesting far deeper than the interpreter's stack.
RAW_TOKENS = st.one_of(
    st.sampled_from(
        ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", str(10**30), "9" * 4400, "-0", "1.7", "0.0", "1.0", "1"]
    ),
    st.sampled_from(['"\\ud800"', '"a\\udfffb"', '"\\u0000"', '"' + "x" * 5000 + '"']),
    st.integers(min_value=50, max_value=6000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(min_value=50, max_value=3000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
)
RAW = "@@RAW@@"


def with_raw(record: dict[str, Any], raw: dict[str, str]) -> str:
    """`record` as one line of JSON, each field named in `raw` replaced by that raw JSON text."""
    for name in raw:
        record[name] = f"{RAW}{name}"
    line = json.dumps(record)
    for name, token in raw.items():
        line = line.replace(json.dumps(f"{RAW}{name}"), token)
    return line


def broken_records(fields: list[str], good: dict[str, Any]) -> st.SearchStrategy[str]:
    """One line of a file: a good record with some fields dropped, changed to anything, added or made raw."""

    @st.composite
    def build(draw: st.DrawFn) -> str:
        record = dict(good)
        for name in draw(st.lists(st.sampled_from(fields), max_size=2, unique=True)):
            record.pop(name, None)
        for name in draw(st.lists(st.sampled_from([*fields, "extra"]), max_size=2, unique=True)):
            record[name] = draw(json_values)
        raw_fields = draw(st.lists(st.sampled_from(fields), max_size=1, unique=True))
        return with_raw(record, {name: draw(RAW_TOKENS) for name in raw_fields})

    return build()


# Values the commands must accept, however odd: markup, emoji codes, line separators, long text, big numbers.
valid_texts = st.one_of(
    st.text(min_size=1, max_size=30).filter(lambda text: bool(text.strip())),
    st.sampled_from(["[/x] markup [bold]", ":smile: code", "é" * 3, "line\u2028separator", "tab\there", "a" * 3000]),
)
valid_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**40), max_value=10**40),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
valid_metadata = st.dictionaries(st.text(max_size=5), valid_json, max_size=3)
junk_lines = st.one_of(
    st.binary(max_size=30).map(lambda data: data.decode("utf-8", "surrogateescape")),
    json_values.map(lambda value: json.dumps(value)),
    RAW_TOKENS,
    st.sampled_from(["", "   ", "{", "}", "[1, 2]", "null", '"text"', "{}", "\ufeff{}"]),
)


def file_contents(good_lines: st.SearchStrategy[str], broken_lines: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """A whole file: either good lines only, or good, broken and junk lines mixed (sometimes raw bytes first),
    joined by \\n or \\r\\n."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        if draw(st.booleans()):
            lines = draw(st.lists(good_lines, min_size=1, max_size=5))
        else:
            lines = draw(st.lists(st.one_of(good_lines, broken_lines, junk_lines), min_size=0, max_size=5))
        text = draw(st.sampled_from(["\n", "\r\n"])).join(lines) + draw(st.sampled_from(["", "\n"]))
        data = text.encode("utf-8", "surrogateescape")  # junk bytes stay bytes (often not UTF-8)
        if draw(st.integers(min_value=0, max_value=9)) == 0:
            data = draw(st.binary(max_size=40)) + data
        return data

    return build()


query_options = st.lists(
    st.tuples(
        st.sampled_from(
            ["max_entries", "create", "synchronous", "timeout", "purge_interval", "size", "socket_timeout",
             "db", "prefix", "index", "cluster", "socket_keepalive", "protocol", "ssl_cert_reqs", "", "max_entries"]
        ) | st.text(max_size=5),
        st.sampled_from(["1", "0", "-1", "abc", "", "nan", "inf", "1e400", "true", "off", "full", "3", "search",
                         "2.5", "99999999999999999999"]) | st.text(max_size=5),
    ),
    max_size=3,
).map(lambda pairs: "&".join(f"{name}={value}" for name, value in pairs))  # fmt: skip


@st.composite
def backend_urls(draw: st.DrawFn, sqlite_file: str = "cache.db") -> str:
    """URLs of every shape: good and garbage schemes, hosts, ports, paths, query options and fragments."""
    scheme = draw(st.sampled_from(["memory", "sqlite", "redis", "rediss", "MEMORY", "SQLite", "Redis", "ftp",
                                   "unix", "http", "", "redis+sentinel", "mem ory"]))  # fmt: skip
    if scheme.lower() == "sqlite":
        # Relative paths only (the working directory is the test's tmp_path); no "..", "/" or "~" at the start.
        name = draw(st.sampled_from([sqlite_file, "other.db", ":memory:", "", "a b.db", "%00x", "[x].db", "d/"]))
        netloc, path = draw(st.sampled_from(["", "", "host"])), "/" + name
    elif scheme.lower() == "memory":
        netloc, path = draw(st.sampled_from(["", "shared", "cli-fuzz"])) + draw(texts.map(str)), ""
    else:
        host = draw(st.sampled_from(["localhost", "127.0.0.1", "[::1]", "[::zz]", "bad host", "", "a" * 70,
                                     "user:pw@h", "héllo"]))  # fmt: skip
        port = draw(st.sampled_from(["", ":6379", ":0", ":99999", ":notaport", ":-1", ":", ":6379:1"]))
        netloc = host + port
        path = draw(st.sampled_from(["", "/", "/0", "/15", "/abc", "/1/2", "/-1", "/99999999999", "/0/"]))
    query = draw(query_options)
    fragment = draw(st.sampled_from(["", "", "#frag"]))
    url = f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "") + fragment
    return draw(st.sampled_from([url, url, url.replace("://", ":/"), url.replace("://", "")]))


# -- a cache with a few entries, for the commands that read one -------------------------------------------

PROMPTS = ["How do I reset my password?", "[/x] markup [bold]", ":smile: emoji code", "é" * 50, "tab\there"]


@pytest.fixture
def populated(tmp_path: Path) -> list[str]:
    """A named memory backend and a SQLite file, each holding a few entries (two namespaces)."""
    lines = [json.dumps({"prompt": p, "response": {"n": n}, "namespace": "ns" if n % 2 else "default"})
             for n, p in enumerate(PROMPTS)]  # fmt: skip
    source = tmp_path / "seed.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    urls = ["memory://cli-fuzz-populated", f"sqlite:///{tmp_path}/populated.db"]
    for url in urls:
        result = run("warm", url, str(source), "--embedder", FAKE_EMBEDDER)
        assert result.exit_code == 0, result.output
    return urls


namespaces = st.one_of(st.none(), st.none(), st.sampled_from(["default", "ns", "missing", "[/y]"]), texts)
rarely_given = st.one_of(st.none(), st.none(), st.none(), texts)  # an option that is mostly left out
embedders = st.sampled_from([FAKE_EMBEDDER] * 6 + ["nonsense", "no_such_module_xyz:Thing", "tests.fakes:Nope",
                                                   "semantic_llm_cache.config:CacheEntry", "tests.fakes:",
                                                   "tests.fakes:unit"])  # fmt: skip


@FUZZ
@given(data=st.data())
def test_stats_inspect_clear_and_export_never_end_in_a_traceback(populated: list[str], data: st.DataObject) -> None:
    anything = st.text(max_size=20).filter(lambda text: not text.startswith("-"))  # "-x" would be an option
    url = data.draw(st.one_of(st.sampled_from(populated), backend_urls("populated.db"), anything))
    if not opens_offline(url):
        return
    command = data.draw(st.sampled_from(["stats", "inspect", "clear", "export"]))
    namespace = data.draw(namespaces)
    arguments = [command, url]
    if command == "stats":
        arguments += data.draw(st.sampled_from([[], ["--json"]]))
    elif command == "inspect":
        arguments += ["--limit", str(data.draw(st.integers(min_value=1, max_value=10**6)))]
    elif command == "export":
        arguments.append(data.draw(st.sampled_from(["out.jsonl", "-", ".", "", "no/such/dir/out.jsonl", "a b/"])))
    elif data.draw(st.booleans()):
        arguments.append("--yes")
    if namespace is not None and command != "stats":
        arguments += ["--namespace", namespace]
    result = run(*arguments, input=data.draw(st.sampled_from([None, "", "n\n", "y\n", "maybe\n"])))
    assert_clean(result)


WARM_RECORD = {"prompt": "How do I reset my password?", "response": "Settings", "namespace": "t", "ttl": 60}
good_warm_lines = st.fixed_dictionaries(
    {"prompt": valid_texts, "response": valid_json},
    optional={
        "namespace": valid_texts,
        "model": st.text(max_size=10),
        "ttl": st.one_of(st.integers(min_value=1, max_value=10**6), st.floats(min_value=0.5, max_value=1e9)),
        "metadata": valid_metadata,
    },
).map(json.dumps)


@FUZZ
@given(
    url=st.one_of(st.none(), st.none(), backend_urls()),  # None: a new, empty memory:// cache
    content=file_contents(good_warm_lines, broken_records([*WARM_RECORD, "model", "metadata"], WARM_RECORD)),
    embedder=embedders,
    namespace=rarely_given,
    ttl=st.one_of(st.none(), st.none(), st.sampled_from(["nan", "inf", "-1", "0", "1e400", "5", "1e12"])),
)
def test_warm_never_ends_in_a_traceback_and_a_bad_file_writes_nothing(
    tmp_path: Path, url: str | None, content: bytes, embedder: str, namespace: str | None, ttl: str | None
) -> None:
    fresh = url is None
    url = f"memory://cli-fuzz-{uuid.uuid4().hex}" if url is None else url
    if not opens_offline(url):
        return
    path = tmp_path / f"warm-{uuid.uuid4().hex}.jsonl"
    path.write_bytes(content)
    arguments = ["warm", url, str(path), "--embedder", embedder]
    arguments += [] if namespace is None else ["--namespace", namespace]
    arguments += [] if ttl is None else ["--ttl", ttl]
    result = run(*arguments)
    assert_clean(result)
    if result.exit_code == 0:
        assert "stored " in result.stdout, result.output
    elif fresh and "then failed" not in result.stderr:
        assert size_of(url) == 0  # the whole file is checked before anything is written


def exported(prompt: str = "How do I reset my password?", **fields: Any) -> dict[str, Any]:
    """An exported entry (the record of one line of an export file)."""
    entry = CacheEntry(prompt=prompt, response={"a": [1, 2]}, partition_id="p" * 32,
                       embedding=np.ones(64, dtype=np.float32) / 8.0, embedder="test-bag-of-words",
                       metadata={"source": "faq"}, hits=3, tokens=10)  # fmt: skip
    record: dict[str, Any] = json.loads(export_line(exact_key("p" * 32, normalize_prompt(prompt)), entry))
    return record | fields


good_export_lines = st.builds(
    lambda prompt, fields: json.dumps(exported(prompt, **fields)),
    valid_texts,
    st.fixed_dictionaries(
        {},
        optional={
            "response": valid_json,
            "metadata": valid_metadata,
            "namespace": valid_texts,
            "hits": st.integers(min_value=0, max_value=2**63 - 1),
            "tokens": st.one_of(st.none(), st.integers(min_value=0, max_value=2**63 - 1)),
            "created_at": st.floats(min_value=0, max_value=4e9),
            "expires_at": st.one_of(st.none(), st.floats(min_value=0, max_value=4e9)),
            "last_hit_at": st.one_of(st.none(), st.floats(min_value=0, max_value=4e9)),
            "compute_seconds": st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)),
            "min_similarity": st.floats(min_value=0, max_value=2),
        },
    ),
)


@FUZZ
@given(
    url=st.one_of(st.none(), st.none(), backend_urls()),  # None: a new, empty memory:// cache
    content=file_contents(good_export_lines, broken_records(list(exported()), exported())),
)
def test_import_never_ends_in_a_traceback_and_a_bad_file_writes_nothing(
    tmp_path: Path, url: str | None, content: bytes
) -> None:
    fresh = url is None
    url = f"memory://cli-fuzz-{uuid.uuid4().hex}" if url is None else url
    if not opens_offline(url):
        return
    path = tmp_path / f"import-{uuid.uuid4().hex}.jsonl"
    path.write_bytes(content)
    result = run("import", url, str(path))
    assert_clean(result)
    if result.exit_code == 0:
        assert "imported " in result.stdout, result.output
    elif fresh and "failed after importing" not in result.stderr:
        assert size_of(url) == 0  # the whole file is checked before anything is written


PAIR = {"text_a": "how do I reset it", "text_b": "reset it how", "label": 1}
good_pairs = st.fixed_dictionaries(
    {"text_a": valid_texts, "text_b": valid_texts, "label": st.sampled_from([0, 1, 0.0, 1.0])}
).map(json.dumps)


@FUZZ
@given(
    content=file_contents(good_pairs, broken_records(list(PAIR), PAIR)),
    embedder=embedders,
    options=st.lists(
        st.one_of(
            st.tuples(st.just("--step"), st.sampled_from(["0.005", "0.02", "0.5", "1", "2", "inf", "1e308"])),
            st.tuples(st.just("--limit"), st.integers(min_value=1, max_value=5).map(str)),
            st.tuples(st.just("--target-precision"), st.floats().map(str)),
        ),
        max_size=2,
    ),
)
def test_calibrate_never_ends_in_a_traceback(
    tmp_path: Path, content: bytes, embedder: str, options: list[tuple[str, str]]
) -> None:
    path = tmp_path / f"pairs-{uuid.uuid4().hex}.jsonl"
    path.write_bytes(content)
    result = run("calibrate", str(path), "--embedder", embedder, *[part for option in options for part in option])
    assert_clean(result, error_codes=(1, 2))  # 2: the pairs file cannot be used
    if result.exit_code == 0:
        assert "recommended threshold" in result.stdout or "no threshold reaches" in result.stdout, result.output


@settings(max_examples=15 * EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    url=st.one_of(
        backend_urls(),
        st.text(max_size=30),
        st.tuples(st.text(max_size=8), st.text(max_size=25)).map(lambda parts: "://".join(parts)),
        st.tuples(st.sampled_from(["redis", "rediss", "sqlite", "memory"]), st.text(max_size=25)).map(
            lambda parts: "://".join(parts)
        ),
    )
)
def test_backend_from_url_raises_only_the_documented_errors(url: str) -> None:
    try:
        backend = backend_from_url(url)
    except SemanticCacheError:  # ConfigurationError, mostly
        return
    assert isinstance(backend, StorageBackend)
    if url.split("://", 1)[0].lower() in ("redis", "rediss"):
        builds_its_redis_clients(backend)
    asyncio.run(backend.close())  # built, never used: nothing was connected or opened


def builds_its_redis_clients(backend: Any) -> None:
    """What a Redis backend does on its first call, short of connecting: redis-py reads the URL (no bad port or
    option value) and builds a connection from it (no option a connection does not take); and, when the URL says
    cluster=yes, a cluster client (no database other than 0). A URL backend_from_url accepts passes all three."""

    async def build() -> None:
        client = backend.connection.make_client(cluster=False)
        try:
            client.connection_pool.make_connection()
        finally:
            await client.aclose()
        if backend.connection.cluster:
            await backend.connection.make_client(cluster=True).aclose()

    asyncio.run(build())
