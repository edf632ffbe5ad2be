"""The `semantic-llm-cache` command, run as a user runs it (typer's runner, and the installed console script),
against memory://, a SQLite file and a real Redis server."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from semantic_llm_cache import Scope, SemanticCache
from semantic_llm_cache.backends.sqlite import SQLiteBackend
from semantic_llm_cache.backends.url import backend_from_url, forget_named_memory_backends
from semantic_llm_cache.cli import app
from semantic_llm_cache.errors import CacheBackendError, InvalidInputError
from tests.fakes import BagOfWordsEmbedder
from tests.sample_data import QQP_SAMPLE

REPOSITORY = Path(__file__).resolve().parents[1]
FAKE_EMBEDDER = "tests.fakes:BagOfWordsEmbedder"
_redis_databases = itertools.cycle(range(1, 16))

RECORDS: list[dict[str, Any]] = [
    {"prompt": "How do I reset my password?", "response": "Open Settings > Security.", "metadata": {"source": "faq"}},
    {"prompt": "What are your opening hours?", "response": {"text": "9 to 5", "days": [1, 2, 3, 4, 5]}},
    {"prompt": "How do I export my data to CSV?", "response": ["Reports", "Export CSV"], "model": "gpt-test"},
    {"prompt": "Where is my parcel?", "response": "Track it under Orders.", "namespace": "shop", "ttl": 3600},
    {"prompt": "Can I pay by invoice?", "response": None, "namespace": "shop"},
]


def run(*arguments: str, input: str | None = None) -> Result:
    """Invoke the command line in this process, wide enough that rich never truncates a table cell."""
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, list(arguments), input=input)


def assert_one_line_error(result: Result, *fragments: str, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def stats_of(url: str) -> dict[str, Any]:
    result = run("stats", url, "--json")
    assert result.exit_code == 0, result.output
    stats: dict[str, Any] = json.loads(result.stdout)
    return stats


async def lookup(url: str, prompt: str, scope: Scope | None = None) -> Any:
    async with SemanticCache(backend_from_url(url), embedder=BagOfWordsEmbedder(), threshold=0.8,
                             on_error="raise") as cache:  # fmt: skip
        return await cache.lookup(prompt, scope)


@pytest.fixture(autouse=True)
def forget_memory_backends() -> Iterator[None]:
    yield
    forget_named_memory_backends()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def cache_url(request: Any, tmp_path: Path) -> Iterator[str]:
    """An empty cache of each kind, as a URL (memory://NAME lives as long as this test process)."""
    if request.param == "memory":
        yield f"memory://cli-{uuid.uuid4().hex}"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/cache.db"
    else:
        server = request.getfixturevalue("redis_plain_server")
        database = next(_redis_databases)
        with server.client(db=database) as client:
            client.flushdb()
            yield f"redis://127.0.0.1:{server.port}/{database}"
            client.flushdb()


@pytest.fixture
def records_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "records.jsonl", RECORDS)


def warm(url: str, path: Path) -> Result:
    result = run("warm", url, str(path), "--embedder", FAKE_EMBEDDER)
    assert result.exit_code == 0, result.output
    return result


def test_warm_then_stats_inspect_export_clear_import_gives_back_the_same_entries(
    cache_url: str, records_file: Path, tmp_path: Path
) -> None:
    assert f"stored {len(RECORDS)} entries" in warm(cache_url, records_file).stdout
    hit = asyncio.run(lookup(cache_url, "how do I reset my password please"))
    assert hit is not None and hit.kind == "semantic" and hit.response == "Open Settings > Security."
    shop_hit = asyncio.run(lookup(cache_url, "Where is my parcel?", Scope(namespace="shop")))
    assert shop_hit is not None and shop_hit.kind == "exact"
    model_hit = asyncio.run(lookup(cache_url, "How do I export my data to CSV?", Scope(model="gpt-test")))
    assert model_hit is not None and model_hit.response == ["Reports", "Export CSV"]
    assert asyncio.run(lookup(cache_url, "How do I export my data to CSV?")) is None  # the model is a wall

    assert stats_of(cache_url)["size"] == len(RECORDS)
    table = run("stats", cache_url)
    assert table.exit_code == 0 and "size" in table.stdout and "statistic" in table.stdout

    listing = run("inspect", cache_url)
    assert listing.exit_code == 0, listing.output
    assert f"{len(RECORDS)} of {len(RECORDS)} entries" in listing.stdout
    for record in RECORDS:
        assert record["prompt"] in listing.stdout
    assert "never" in listing.stdout and ("in 59.9m" in listing.stdout or "in 60.0m" in listing.stdout)
    only_shop = run("inspect", cache_url, "--namespace", "shop", "--limit", "1")
    assert "1 of 2 entries in namespace 'shop'" in only_shop.stdout
    assert "Can I pay by invoice?" in only_shop.stdout  # newest first
    assert "reset my password" not in only_shop.stdout

    backup = tmp_path / "backup.jsonl"
    exported = run("export", cache_url, str(backup))
    assert exported.exit_code == 0 and f"exported {len(RECORDS)} entries" in exported.output
    before = sorted(backup.read_text().splitlines())
    assert len(before) == len(RECORDS) and all('"embedding": "' in line for line in before)

    cleared = run("clear", cache_url, "--yes")
    assert cleared.exit_code == 0 and f"deleted {len(RECORDS)} entries" in cleared.stdout
    assert stats_of(cache_url)["size"] == 0

    imported = run("import", cache_url, str(backup))
    assert imported.exit_code == 0 and f"imported {len(RECORDS)} entries" in imported.stdout
    again = tmp_path / "again.jsonl"
    assert run("export", cache_url, str(again)).exit_code == 0
    assert sorted(again.read_text().splitlines()) == before
    restored = asyncio.run(lookup(cache_url, "how do I reset my password please"))
    assert restored is not None and restored.response == "Open Settings > Security."


def test_clear_asks_before_deleting_and_can_keep_to_one_namespace(cache_url: str, records_file: Path) -> None:
    warm(cache_url, records_file)
    declined = run("clear", cache_url, input="n\n")
    assert "Delete 5 entries" in declined.stdout
    assert_one_line_error(declined, "nothing was deleted", "--yes")
    no_terminal = run("clear", cache_url, input="")
    assert_one_line_error(no_terminal, "nothing was deleted")
    assert stats_of(cache_url)["size"] == 5

    shop = run("clear", cache_url, "--namespace", "shop", "--yes")
    assert shop.exit_code == 0 and "deleted 2 entries of namespace 'shop'" in shop.stdout
    assert stats_of(cache_url)["size"] == 3

    confirmed = run("clear", cache_url, input="y\n")
    assert confirmed.exit_code == 0 and "deleted 3 entries" in confirmed.stdout
    assert stats_of(cache_url)["size"] == 0
    nothing = run("clear", cache_url)
    assert nothing.exit_code == 0 and "nothing to delete: no entries" in nothing.stdout


def test_warm_keeps_the_last_answer_of_a_repeated_prompt(cache_url: str, tmp_path: Path) -> None:
    records = [
        {"prompt": "What is the refund policy?", "response": "old answer"},
        {"prompt": "Where do I log in?", "response": "top right"},
        {"prompt": "  What is the   refund policy? ", "response": "new answer"},
        {"prompt": "What is the refund policy?", "response": "a tenant's answer", "namespace": "tenant"},
    ]
    result = warm(cache_url, write_jsonl(tmp_path / "records.jsonl", records))
    assert "stored 3 entries from 4 records" in result.stdout and "1 repeated an earlier prompt" in result.stdout
    assert stats_of(cache_url)["size"] == 3
    hit = asyncio.run(lookup(cache_url, "What is the refund policy?"))
    assert hit is not None and hit.response == "new answer"
    tenant = asyncio.run(lookup(cache_url, "What is the refund policy?", Scope(namespace="tenant")))
    assert tenant is not None and tenant.response == "a tenant's answer"


def test_warm_failing_midway_says_how_far_it_got_and_that_a_rerun_is_safe(
    records_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/cache.db"
    real_set = SQLiteBackend.set
    calls = 0

    async def failing_set(self: SQLiteBackend, key: str, entry: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise CacheBackendError("disk full")
        await real_set(self, key, entry)

    monkeypatch.setattr(SQLiteBackend, "set", failing_set)
    result = run("warm", url, str(records_file), "--embedder", FAKE_EMBEDDER, "--concurrency", "2")
    line = assert_one_line_error(result, "of 5 entries, then failed", "disk full", "running warm again is safe")
    reported = int(re.search(r"stored (\d+) of 5", line).group(1))  # type: ignore[union-attr]
    monkeypatch.setattr(SQLiteBackend, "set", real_set)
    assert 2 <= reported <= 3 and stats_of(url)["size"] == reported  # exact, with two stores under way at once
    warm(url, records_file)
    assert stats_of(url)["size"] == 5


def write_records_with_a_bad_fifth_line(path: Path, bad_line: str) -> Path:
    good = [json.dumps(record) for record in RECORDS[:3]]
    path.write_text("\n".join([good[0], "", good[1], good[2], bad_line, good[0]]) + "\n", encoding="utf-8")
    return path


def test_warm_checks_the_whole_file_before_writing_anything(cache_url: str, tmp_path: Path) -> None:
    path = write_records_with_a_bad_fifth_line(tmp_path / "records.jsonl", '{"prompt": "q", "response": 1, "ttl": 0}')
    result = run("warm", cache_url, str(path), "--embedder", FAKE_EMBEDDER)
    assert_one_line_error(result, f"{path} line 5", "ttl must be a positive number", "nothing was written")
    if cache_url.startswith("sqlite"):
        assert not Path(cache_url.removeprefix("sqlite:///")).exists()
    else:
        assert stats_of(cache_url)["size"] == 0


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object, got list"),
        ('{"prompt": "no answer"}', "missing 'response'"),
        ('{"prompt": "   ", "response": 1}', "prompt is empty"),
        ('{"prompt": "q", "response": 1, "ttl": -5}', "ttl must be a positive number"),
        ('{"prompt": "q", "response": 1, "respons": 2}', "unknown field(s) respons"),
        ('{"prompt": "q", "response": 1, "metadata": [1]}', "metadata must be an object"),
        ('{"prompt": "q", "response": 1, "namespace": 7}', "namespace must be a non-empty string"),
        ('{"prompt": "q", "response": 1, "model": ["m"]}', "model must be a string"),
    ],
)
def test_warm_names_each_kind_of_malformed_line(tmp_path: Path, bad_line: str, fragment: str) -> None:
    url = f"memory://cli-{uuid.uuid4().hex}"
    path = write_records_with_a_bad_fifth_line(tmp_path / "records.jsonl", bad_line)
    result = run("warm", url, str(path), "--embedder", FAKE_EMBEDDER)
    assert_one_line_error(result, f"{path} line 5", fragment, "nothing was written")
    assert stats_of(url)["size"] == 0


def exported_backup(url: str, records_file: Path, tmp_path: Path) -> Path:
    """Warm `url`, export it, clear it; the backup's path."""
    warm(url, records_file)
    backup = tmp_path / "backup.jsonl"
    assert run("export", url, str(backup)).exit_code == 0
    assert run("clear", url, "--yes").exit_code == 0
    return backup


def corrupt_third_line(backup: Path, corrupt: Any) -> None:
    lines = backup.read_text().splitlines()
    if callable(corrupt):
        record = json.loads(lines[2])
        corrupt(record)
        lines[2] = json.dumps(record)
    else:
        lines[2] = corrupt
    backup.write_text("\n".join(lines) + "\n")


def test_import_checks_the_whole_file_before_writing_anything(
    cache_url: str, records_file: Path, tmp_path: Path
) -> None:
    backup = exported_backup(cache_url, records_file, tmp_path)
    corrupt_third_line(backup, lambda record: record.update(embedding="***not base64***"))
    result = run("import", cache_url, str(backup))
    assert_one_line_error(result, f"{backup} line 3", "malformed entry", "nothing was imported")
    assert stats_of(cache_url)["size"] == 0


@pytest.mark.parametrize(
    ("corrupt", "fragment"),
    [
        (lambda record: record.pop("key"), 'missing the entry\'s "key"'),
        (lambda record: record.update(key="f" * 32 + ":" + "0" * 32), "is not in the entry's partition"),
        (lambda record: record.update(key="no-colon"), "not a cache key"),
        (lambda record: record.update(format=99), "entry format 99 is not supported"),
        (lambda record: record.pop("prompt"), "malformed entry: KeyError"),
        (lambda record: record.update(response=float("nan")), "which JSON cannot hold"),
        ('{"key": "truncated', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
    ],
)
def test_import_names_each_kind_of_malformed_line(
    records_file: Path, tmp_path: Path, corrupt: Any, fragment: str
) -> None:
    url = f"memory://cli-{uuid.uuid4().hex}"
    backup = exported_backup(url, records_file, tmp_path)
    corrupt_third_line(backup, corrupt)
    assert_one_line_error(run("import", url, str(backup)), f"{backup} line 3", fragment, "nothing was imported")
    assert stats_of(url)["size"] == 0


def test_import_failing_midway_says_exactly_how_far_it_got(
    records_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/cache.db"
    warm(url, records_file)
    backup = tmp_path / "backup.jsonl"
    assert run("export", url, str(backup)).exit_code == 0
    assert run("clear", url, "--yes").exit_code == 0
    real_set = SQLiteBackend.set
    calls = 0

    async def failing_set(self: SQLiteBackend, key: str, entry: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise CacheBackendError("disk full")
        await real_set(self, key, entry)

    monkeypatch.setattr(SQLiteBackend, "set", failing_set)
    result = run("import", url, str(backup))
    assert_one_line_error(result, f"{backup} line 3", "after importing 2 of 5 entries", "disk full")
    monkeypatch.setattr(SQLiteBackend, "set", real_set)
    assert stats_of(url)["size"] == 2
    imported_keys = {json.loads(line)["key"] for line in backup.read_text().splitlines()[:2]}
    exported = tmp_path / "partial.jsonl"
    assert run("export", url, str(exported)).exit_code == 0
    assert {json.loads(line)["key"] for line in exported.read_text().splitlines()} == imported_keys


def test_import_skips_entries_that_expired_since_the_export(cache_url: str, tmp_path: Path) -> None:
    records = [{"prompt": "short lived", "response": 1, "ttl": 3600}, {"prompt": "forever", "response": 2}]
    warm(cache_url, write_jsonl(tmp_path / "records.jsonl", records))
    backup = tmp_path / "backup.jsonl"
    assert run("export", cache_url, str(backup)).exit_code == 0
    lines = [json.loads(line) for line in backup.read_text().splitlines()]
    for record in lines:
        if record["expires_at"] is not None:
            record["expires_at"] = 1.0  # long past
    write_jsonl(backup, lines)
    assert run("clear", cache_url, "--yes").exit_code == 0
    result = run("import", cache_url, str(backup))
    assert result.exit_code == 0 and "imported 1 entry into" in result.stdout
    assert "skipped 1 already expired" in result.stdout
    assert stats_of(cache_url)["size"] == 1


def test_export_to_stdout(records_file: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cache.db"
    warm(url, records_file)
    result = run("export", url, "-")
    assert result.exit_code == 0
    prompts = {json.loads(line)["prompt"] for line in result.stdout.splitlines()}
    assert prompts == {record["prompt"] for record in RECORDS}


def test_user_errors_print_one_line_and_exit_non_zero(tmp_path: Path, records_file: Path) -> None:
    from tests.plugins.redis_servers import free_port

    missing_db = tmp_path / "missing.db"
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("hello " * 1000)
    missing_file = tmp_path / "missing.jsonl"
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        (["stats", "ftp://example.com/x"], ("unsupported backend URL scheme 'ftp://'", "sqlite://", "redis://")),
        (["inspect", "cache.db"], ("not a backend URL",)),
        (["stats", f"sqlite:///{missing_db}"], ("no SQLite cache at", str(missing_db))),
        (["export", f"sqlite:///{missing_db}", str(tmp_path / "out.jsonl")], ("no SQLite cache at",)),
        (["clear", f"sqlite:///{missing_db}", "--yes"], ("no SQLite cache at",)),
        (["inspect", f"sqlite:///{not_a_db}"], ("not a usable SQLite cache",)),
        (["stats", f"redis://127.0.0.1:{free_port()}/0"], ("unreachable",)),
        (["warm", "memory://", str(missing_file), "--embedder", FAKE_EMBEDDER], ("no such file", str(missing_file))),
        (["import", "memory://", str(missing_file)], ("no such file",)),
        (["warm", "memory://", str(records_file), "--embedder", "no_such_module:Thing"], ("cannot load embedder",)),
        (["warm", "memory://", str(records_file), "--embedder", "nonsense"], ('"bundled" or "module:attribute"',)),
        (["calibrate", str(records_file), "--target-precision", "1.5"], ("--target-precision must be",)),
        (["export", f"sqlite:///{not_a_db}", str(tmp_path / "out.jsonl")], ("not a usable SQLite cache",)),
    ]
    for arguments, fragments in cases:
        assert_one_line_error(run(*arguments), *fragments)
    assert_one_line_error(run("calibrate", str(missing_file)), "no such file", code=2)  # the pairs file: 2
    assert not missing_db.exists() and not (tmp_path / "out.jsonl").exists()


def calibration_sample(path: Path, per_label: int = 15) -> Path:
    """A small labeled file: the first `per_label` pairs of each label from the committed QQP sample."""
    chosen: dict[int, list[str]] = {0: [], 1: []}
    with QQP_SAMPLE.open(encoding="utf-8") as source:
        for line in source:
            label = json.loads(line)["label"]
            if len(chosen[label]) < per_label:
                chosen[label].append(line)
            if all(len(lines) == per_label for lines in chosen.values()):
                break
    path.write_text("".join(chosen[1] + chosen[0]), encoding="utf-8")
    return path


def test_calibrate_names_a_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"text_a": "a", "text_b": "b", "label": 1}\n{"text_a": "a", "label": 1}\n', encoding="utf-8")
    result = run("calibrate", str(path), "--embedder", FAKE_EMBEDDER)
    assert_one_line_error(
        result, f"{path} line 2", "missing 'text_b'", "needs the fields text_a, text_b and label", code=2
    )


def test_calibrate_prints_both_guard_settings_and_the_recommendation(tmp_path: Path) -> None:
    from semantic_llm_cache.calibration import load_pairs, sweep

    pairs_file = tmp_path / "pairs.jsonl"
    write_jsonl(
        pairs_file,
        [{"text_a": f"how do i reset password number {n}", "text_b": f"how do i reset password number {n} now",
          "label": 1} for n in range(10)]
        + [{"text_a": f"opening hours of shop {n}", "text_b": f"closing hours of shop {n}", "label": 0}
           for n in range(10)],
    )  # fmt: skip
    result = run("calibrate", str(pairs_file), "--embedder", FAKE_EMBEDDER, "--target-precision", "0.95")
    assert result.exit_code == 0, result.output
    report = asyncio.run(sweep(load_pairs(pairs_file), BagOfWordsEmbedder()))
    for guard, label in ((True, "with the answer guard"), (False, "without the guard")):
        row = report.recommend(0.95, guard=guard)
        if row is None:
            assert f"no threshold reaches precision 0.95 {label}" in result.stdout
        else:
            assert f"recommended threshold {label}: {row.threshold:.3f} (precision {row.precision:.3f}" in result.stdout
    assert "guard off" in result.stdout and "guard on" in result.stdout
    assert "0.600" in result.stdout and "0.620" in result.stdout and "0.610" not in result.stdout  # --step 0.02


@pytest.mark.model
def test_calibrate_with_the_bundled_model_writes_a_plot(tmp_path: Path) -> None:
    from semantic_llm_cache.cache import default_embedder
    from semantic_llm_cache.calibration import load_pairs, sweep

    pairs_file = calibration_sample(tmp_path / "pairs.jsonl")
    plot = tmp_path / "calibration.png"
    result = run("calibrate", str(pairs_file), "--target-precision", "0.8", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    assert "30 pairs (15 same meaning)" in result.stdout and "all-MiniLM-L6-v2" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot written to {plot}" in result.stdout
    report = asyncio.run(sweep(load_pairs(pairs_file), default_embedder()))
    row = report.recommend(0.8)
    expected = (
        f"recommended threshold with the answer guard: {row.threshold:.3f}"
        if row is not None
        else "no threshold reaches precision 0.8 with the answer guard"
    )
    assert expected in result.stdout


@pytest.mark.model
def test_demo_shows_exact_and_semantic_hits_and_misses() -> None:
    result = run("demo")
    assert result.exit_code == 0, result.output
    assert "exact hit" in result.stdout and "semantic" in result.stdout and "miss" in result.stdout


def test_the_console_script_works_as_a_user_runs_it(tmp_path: Path, records_file: Path) -> None:
    script = Path(sys.executable).with_name("semantic-llm-cache")
    assert script.exists(), "the console script should be installed with the package"
    url = f"sqlite:///{tmp_path}/cache.db"
    # The code under test, whichever checkout the virtualenv's editable install points at.
    environment = {
        **os.environ,
        "COLUMNS": "200",
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
    }

    def shell(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(arguments, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=120)

    warmed = shell(str(script), "warm", url, str(records_file), "--embedder", FAKE_EMBEDDER)
    assert warmed.returncode == 0 and "stored 5 entries" in warmed.stdout, warmed.stderr
    stats = shell(sys.executable, "-m", "semantic_llm_cache", "stats", url, "--json")
    assert stats.returncode == 0 and json.loads(stats.stdout)["size"] == 5, stats.stderr
    failed = shell(str(script), "stats", "mongodb://localhost")
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.strip().startswith("error: unsupported backend URL scheme") and failed.stderr.count("\n") == 1
    usage = shell(str(script), "--help")
    assert usage.returncode == 0
    for command in ("demo", "stats", "inspect", "clear", "delete", "calibrate", "warm", "export", "import"):
        assert command in usage.stdout


# -- what an adversarial run found: every mistake is one line and exit code 1, never a traceback -------------


def assert_nothing_stored(url: str) -> None:
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        assert not path.exists() or stats_of(url)["size"] == 0
    else:
        assert stats_of(url)["size"] == 0


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("redis://localhost:notaport/0", ("bad Redis URL", "the port must be a number from 1 to 65535", "'notaport'")),
        ("redis://localhost:99999", ("bad Redis URL", "the port must be a number from 1 to 65535", "'99999'")),
        ("redis://127.0.0.1:1/abc", ("bad Redis URL", "the path must be a database number", "'/abc'")),
        ("redis://h:6379/0?socket_timeout=abc", ("bad value for 'socket_timeout'", "positive number of seconds")),
        ("redis://h:6379/0?colour=blue", ("unknown option 'colour'",)),
        ("rediss://h:6380/0?ssl_cert_reqs=maybe", ("bad value for 'ssl_cert_reqs'",)),
    ],
)
@pytest.mark.parametrize("command", ["stats", "inspect", "clear", "export", "warm", "import"])
def test_bad_redis_urls_are_one_line_errors_in_every_command(
    command: str, url: str, fragments: tuple[str, ...], records_file: Path, tmp_path: Path
) -> None:
    arguments = {
        "stats": [url],
        "inspect": [url],
        "clear": [url, "--yes"],
        "export": [url, str(tmp_path / "out.jsonl")],
        "warm": [url, str(records_file), "--embedder", FAKE_EMBEDDER],
        "import": [url, str(records_file)],
    }[command]
    if command == "import":  # a valid export file, so that the URL is what fails
        source = f"memory://cli-{uuid.uuid4().hex}"
        arguments[1] = str(exported_backup(source, records_file, tmp_path))
    line = assert_one_line_error(run(command, *arguments), *fragments)
    assert "redis://localhost:6379/0" in line  # says what a good URL looks like
    assert not (tmp_path / "out.jsonl").exists()


DEEP = "[" * 5000 + "]" * 5000


def good_pair(number: int) -> str:
    return json.dumps({"text_a": f"how do I reset password {number}", "text_b": f"reset password {number}", "label": 1})


def input_file(command: str, tmp_path: Path, bad_line: str, records_file: Path) -> Path:
    """An input file for `command` whose third line is `bad_line` (the others good)."""
    if command == "calibrate":
        good = [good_pair(1), good_pair(2), good_pair(4)]
    elif command == "warm":
        good = [json.dumps(record) for record in RECORDS[:3]]
    else:
        backup = exported_backup(f"memory://cli-{uuid.uuid4().hex}", records_file, tmp_path)
        good = backup.read_text(encoding="utf-8").splitlines()[:3]
    path = tmp_path / f"{command}-input.jsonl"
    path.write_text("\n".join([good[0], good[1], bad_line, good[2]]) + "\n", encoding="utf-8")
    return path


def code_of(command: str) -> int:
    """The exit code of a bad input file: 2 for calibrate's pairs file, 1 for warm's and import's."""
    return 2 if command == "calibrate" else 1


def run_on_file(command: str, url: str, path: Path) -> Result:
    if command == "calibrate":
        return run("calibrate", str(path), "--embedder", FAKE_EMBEDDER)
    if command == "warm":
        return run("warm", url, str(path), "--embedder", FAKE_EMBEDDER)
    return run("import", url, str(path))


@pytest.mark.parametrize("command", ["warm", "import", "calibrate"])
@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        (DEEP, "nest too deeply to read (at most 100 levels)"),
        ('{"prompt": ' + DEEP + "}", "nest too deeply to read"),
        ('"\\ud800"', "expected a JSON object, got string"),
        ('{"n": ' + "9" * 5000 + "}", "an integer with too many digits (at most 4300)"),
    ],
)
def test_deep_nesting_and_huge_integers_in_an_input_file_name_the_line(
    command: str, bad_line: str, fragment: str, records_file: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/cache.db"
    path = input_file(command, tmp_path, bad_line, records_file)
    assert_one_line_error(run_on_file(command, url, path), f"{path} line 3", fragment, code=code_of(command))
    assert_nothing_stored(url)


@pytest.mark.parametrize("command", ["warm", "import", "calibrate"])
def test_a_lone_surrogate_in_an_input_file_names_the_line_and_writes_nothing(
    command: str, records_file: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/cache.db"
    if command == "calibrate":
        bad_line = '{"text_a": "reset \\ud800 password", "text_b": "reset password", "label": 1}'
        field = "text_a"
    elif command == "warm":
        bad_line = '{"prompt": "fine", "response": {"text": "a\\udfffb"}}'
        field = "response"
    else:
        bad_line = input_file("import", tmp_path, "{}", records_file).read_text().splitlines()[0]
        bad_line = bad_line.replace('"prompt": "', '"prompt": "\\ud800', 1)
        field = "prompt"
    path = input_file(command, tmp_path, bad_line, records_file)
    assert_one_line_error(
        run_on_file(command, url, path), f"{path} line 3", f"{field}", "lone surrogate", code=code_of(command)
    )
    assert_nothing_stored(url)


@pytest.mark.parametrize("command", ["warm", "import", "calibrate"])
def test_an_input_file_that_is_not_utf8_names_the_file_and_line(
    command: str, records_file: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/cache.db"
    path = input_file(command, tmp_path, "LATIN1", records_file)
    path.write_bytes(path.read_bytes().replace(b"LATIN1", '{"prompt": "caf\u00e9"}'.encode("latin-1")))
    line = assert_one_line_error(
        run_on_file(command, url, path), f"{path} line 3", "not UTF-8 text", code=code_of(command)
    )
    assert "byte 0xe9" in line
    assert_nothing_stored(url)


def test_an_input_file_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    url = f"memory://cli-{uuid.uuid4().hex}"
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\r\n" for r in RECORDS).encode("utf-8"))
    assert f"stored {len(RECORDS)} entries" in warm(url, path).stdout


@pytest.mark.parametrize(
    ("field", "raw", "fragment"),
    [
        ("hits", "1e400", "hits must be a whole number from 0 to 2**63-1, got inf"),
        ("hits", str(10**30), "hits must be a whole number from 0 to 2**63-1, got an integer of 31 digits"),
        ("hits", "-3", "hits must be a whole number from 0 to 2**63-1, got -3"),
        ("hits", "2.5", "hits must be a whole number from 0 to 2**63-1, got 2.5"),
        ("hits", '"3"', "hits must be a whole number from 0 to 2**63-1, got '3'"),
        ("hits", "true", "hits must be a whole number from 0 to 2**63-1, got true"),
        ("tokens", str(2**63), "tokens must be a whole number"),
        ("created_at", "1e400", "created_at must be a Unix timestamp"),
        ("created_at", '"yesterday"', "created_at must be a Unix timestamp"),
        ("created_at", "-1", "created_at must be a Unix timestamp"),
        ("created_at", "null", "created_at must be a Unix timestamp"),
        ("created_at", "1e300", "created_at must be a number of seconds between 0 and"),  # CacheEntry's bound
        ("last_hit_at", "NaN", "last_hit_at must be a Unix timestamp"),
        ("expires_at", "Infinity", "expires_at must be a Unix timestamp"),
        ("compute_seconds", "1e400", "compute_seconds must be a number of seconds >= 0"),
        ("min_similarity", '"0.5"', "min_similarity must be a number from 0 to 2"),
        ("metadata", "[]", "metadata must be an object or null, got a list"),
        ("embedding", "[0.1, 0.2]", "embedding must be base64 text or null"),
        ("prompt", "null", "prompt must be a string, got null"),
        ("namespace", "7", "namespace must be a string, got 7"),
    ],
)
def test_import_refuses_fields_it_would_otherwise_convert_or_overflow(
    records_file: Path, tmp_path: Path, field: str, raw: str, fragment: str
) -> None:
    url = f"sqlite:///{tmp_path}/cache.db"
    backup = exported_backup(f"memory://cli-{uuid.uuid4().hex}", records_file, tmp_path)
    lines = backup.read_text().splitlines()
    record = json.loads(lines[2])
    record[field] = "@@RAW@@"
    lines[2] = json.dumps(record).replace('"@@RAW@@"', raw)
    backup.write_text("\n".join(lines) + "\n")
    assert_one_line_error(run("import", url, str(backup)), f"{backup} line 3", fragment, "nothing was imported")
    assert_nothing_stored(url)


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        (
            '{"text_a": "a b", "text_b": "a c", "label": 1.7}',
            "label must be 0 (different meaning) or 1 (same meaning), got 1.7",
        ),
        (
            '{"text_a": "a b", "text_b": "a c", "label": "1"}',
            "label must be 0 (different meaning) or 1 (same meaning), got '1'",
        ),
        ('{"text_a": "a b", "text_b": "a c", "label": null}', "got null"),
        ('{"text_a": "a b", "text_b": "a c", "label": true}', "got true"),
        ('{"text_a": "a b", "text_b": "a c", "label": 2}', "got 2"),
        ('{"text_a": "a b", "text_b": "a c", "label": [1]}', "got a list"),
        ('{"text_a": "a b", "label": 1}', "missing 'text_b'"),
        ('{"label": 1}', "missing 'text_a', 'text_b'"),
        ('{"text_a": "a b", "text_b": 7, "label": 1}', "text_b must be a string, got 7"),
        ('{"text_a": "   ", "text_b": "a c", "label": 1}', "text_a is empty"),
        ("[1, 2]", "expected a JSON object, got list"),
        ("{oops", "not valid JSON"),
    ],
)
def test_calibrate_takes_labels_of_exactly_0_or_1_and_names_a_bad_line(
    tmp_path: Path, bad_line: str, fragment: str
) -> None:
    path = input_file("calibrate", tmp_path, bad_line, tmp_path)
    assert_one_line_error(run_on_file("calibrate", "", path), f"{path} line 3", fragment, code=2)


def test_calibrate_reads_float_labels_0_and_1_as_the_integers(tmp_path: Path) -> None:
    pairs = [json.loads(good_pair(n)) | {"label": n % 2} for n in range(6)]
    as_ints = write_jsonl(tmp_path / "ints.jsonl", pairs)
    as_floats = write_jsonl(tmp_path / "floats.jsonl", [pair | {"label": float(pair["label"])} for pair in pairs])
    outputs = [run("calibrate", str(path), "--embedder", FAKE_EMBEDDER) for path in (as_ints, as_floats)]
    assert all(result.exit_code == 0 for result in outputs), [result.output for result in outputs]
    assert outputs[0].stdout == outputs[1].stdout and "6 pairs (3 same meaning)" in outputs[0].stdout


def test_calibrate_of_an_empty_file_or_a_bad_step_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    assert_one_line_error(run("calibrate", str(empty), "--embedder", FAKE_EMBEDDER), "holds no labeled pairs", code=2)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [json.loads(good_pair(1))])
    for step in ("inf", "1.5"):
        result = run("calibrate", str(pairs), "--embedder", FAKE_EMBEDDER, "--step", step)
        assert_one_line_error(result, "--step must be a number from 0.005 to 1")
    directory = run("calibrate", str(tmp_path), "--embedder", FAKE_EMBEDDER)
    assert_one_line_error(directory, f"not a file: {tmp_path}", code=2)


class ExplodingEmbedder(BagOfWordsEmbedder):
    """An embedder whose model falls over on every call (a user's embedder with a bug)."""

    async def embed(self, texts: Any) -> Any:
        raise RuntimeError("model fell over")


class NeedsArguments:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key


def test_a_failing_embedder_is_one_line_in_warm_and_calibrate(tmp_path: Path, records_file: Path) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [json.loads(good_pair(n)) for n in range(3)])
    url = f"memory://cli-{uuid.uuid4().hex}"
    exploding, needs_arguments = "tests.test_cli:ExplodingEmbedder", "tests.test_cli:NeedsArguments"
    failed = run("calibrate", str(pairs), "--embedder", exploding)
    assert_one_line_error(failed, "the embedder test-bag-of-words failed: RuntimeError: model fell over")
    failed = run("warm", url, str(records_file), "--embedder", exploding)
    assert_one_line_error(failed, "failed: RuntimeError: model fell over")
    assert stats_of(url)["size"] == 0
    for command in (["calibrate", str(pairs)], ["warm", url, str(records_file)]):
        result = run(*command, "--embedder", needs_arguments)
        assert_one_line_error(result, "cannot create embedder", "NeedsArguments() failed with TypeError", "api_key")


@pytest.mark.parametrize(
    "error",
    [InvalidInputError("prompt contains a lone surrogate"), CacheBackendError("disk on fire"), RuntimeError("boom")],
)
def test_every_command_turns_any_error_into_one_line(
    tmp_path: Path, records_file: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    from semantic_llm_cache import calibration
    from semantic_llm_cache.backends.memory import MemoryBackend

    url = f"memory://cli-{uuid.uuid4().hex}"
    backup = exported_backup(url, records_file, tmp_path)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [json.loads(good_pair(n)) for n in range(3)])

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise error

    for method in ("get_stats", "iterate", "clear", "set", "get", "find_nearest", "find_similar"):
        if hasattr(MemoryBackend, method):
            monkeypatch.setattr(MemoryBackend, method, failing)
    monkeypatch.setattr(calibration, "sweep", failing)
    expected = f"RuntimeError: {error}" if isinstance(error, RuntimeError) else str(error)
    for command in (
        ["stats", url],
        ["stats", url, "--json"],
        ["inspect", url],
        ["clear", url, "--yes"],
        ["export", url, str(tmp_path / "out.jsonl")],
        ["warm", url, str(records_file), "--embedder", FAKE_EMBEDDER],
        ["import", url, str(backup)],
        ["calibrate", str(pairs), "--embedder", FAKE_EMBEDDER],
    ):
        assert_one_line_error(run(*command), expected)


def test_prompts_namespaces_and_paths_are_shown_as_they_are_not_as_markup(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/[bold]cache[red].db"
    records = [
        {"prompt": "[/x] how do I reset my password?", "response": 1, "namespace": "[/y]"},
        {"prompt": ":thumbs_up: [red]is this red?[/red]", "response": 2},
    ]
    warmed = warm(url, write_jsonl(tmp_path / "records.jsonl", records))
    assert f"in {url}" in warmed.stdout
    listing = run("inspect", url)
    assert listing.exit_code == 0, listing.output
    assert "[/x] how do I reset my password?" in listing.stdout and "[/y]" in listing.stdout
    assert ":thumbs_up: [red]is this red?[/red]" in listing.stdout
    only = run("inspect", url, "--namespace", "[/y]")
    assert only.exit_code == 0 and "in namespace '[/y]'" in only.stdout, only.output
    table = run("stats", url)
    assert table.exit_code == 0 and "[bold]cache[red].db" in table.stdout, table.output


def test_an_empty_namespace_option_is_refused_rather_than_read_as_every_namespace(
    cache_url: str, records_file: Path
) -> None:
    warm(cache_url, records_file)
    for command in (["clear", cache_url, "--yes"], ["inspect", cache_url], ["export", cache_url, "-"]):
        assert_one_line_error(run(*command, "--namespace", " "), "--namespace must be a non-empty namespace name")
    assert_one_line_error(run("warm", cache_url, str(records_file), "-n", ""), "--namespace must be a non-empty")
    assert stats_of(cache_url)["size"] == len(RECORDS)


def test_export_to_a_directory_is_one_line(tmp_path: Path, records_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"memory://cli-{uuid.uuid4().hex}"
    warm(url, records_file)
    monkeypatch.chdir(tmp_path)
    for target in (".", str(tmp_path), ""):
        assert_one_line_error(run("export", url, target), "it is a directory")
    missing_parent = tmp_path / "no" / "such" / "dir" / "out.jsonl"
    assert_one_line_error(run("export", url, str(missing_parent)), f"cannot write {missing_parent}")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["records.jsonl"]


def test_warm_refuses_an_embedder_whose_entries_no_application_could_find(tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"prompt": "What is the refund policy?", "response": "30 days"}) + "\n")
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    assert_one_line_error(run("warm", url, str(records), "--embedder", "tests.fakes:unnamed_embed"), "names no model")
    assert not (tmp_path / "cache.db").exists()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text_a": "a", "text_b": "b", "label": 1.7}', "label must be 0 or 1"),
        ('{"text_a": "a", "text_b": "b", "label": "1"}', "label must be 0 or 1"),
        ('{"text_a": "a", "text_b": "b", "label": true}', "label must be 0 or 1"),
        ('{"text_a": null, "text_b": "b", "label": 1}', "text_a must be a non-empty string"),
        ('{"text_a": "a", "label": 1}', "text_b must be a non-empty string"),
        ("[" * 5000 + "]" * 5000, "nests too deeply"),
        ('{"text_a": "\\ud800", "text_b": "b", "label": 0}', "surrogate"),
    ],
)
def test_the_library_pair_loader_is_as_strict_as_the_cli(tmp_path: Path, line: str, message: str) -> None:
    from semantic_llm_cache.calibration import load_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"text_a": "a", "text_b": "b", "label": 1.0}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=message):
        load_pairs(path)
    path.write_bytes(b'{"text_a": "caf\xe9", "text_b": "b", "label": 1}\n')
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        load_pairs(path)


# -- issue 15: delete by key, memory:// notes, plurals ------------------------------------------------------


def test_delete_takes_the_keys_inspect_shows_and_hits_carry(cache_url: str, records_file: Path) -> None:
    warm(cache_url, records_file)
    hit = asyncio.run(lookup(cache_url, "how do I reset my password please"))
    assert hit is not None
    assert hit.key in run("inspect", cache_url).stdout  # a user finds the key there
    shop = asyncio.run(lookup(cache_url, "Where is my parcel?", Scope(namespace="shop")))
    assert shop is not None

    some_missing = run("delete", cache_url, hit.key, "0" * 32 + ":" + "0" * 32)
    assert some_missing.exit_code == 1, some_missing.output
    assert f"deleted {hit.key}" in some_missing.stdout and f"not found: {'0' * 32}:" in some_missing.stdout
    assert "1 entry deleted; 1 key not found" in some_missing.stderr and "Traceback" not in some_missing.output
    assert asyncio.run(lookup(cache_url, "How do I reset my password?")) is None
    assert stats_of(cache_url)["size"] == len(RECORDS) - 1
    again = run("delete", cache_url, hit.key)
    assert again.exit_code == 1 and f"not found: {hit.key}" in again.stdout

    other_tenant = run("delete", cache_url, shop.key, "--namespace", "default")
    assert other_tenant.exit_code == 1 and f"not found in namespace 'default': {shop.key}" in other_tenant.stdout
    assert stats_of(cache_url)["size"] == len(RECORDS) - 1
    own_tenant = run("delete", cache_url, shop.key, "--namespace", "shop")
    assert own_tenant.exit_code == 0 and own_tenant.stdout.strip() == f"deleted {shop.key}"
    assert stats_of(cache_url)["size"] == len(RECORDS) - 2


def test_delete_refuses_an_empty_key_and_a_missing_sqlite_file(tmp_path: Path) -> None:
    assert_one_line_error(run("delete", f"sqlite:///{tmp_path}/none.db", "a:b"), "no SQLite cache at")
    assert not (tmp_path / "none.db").exists()
    assert_one_line_error(run("delete", f"sqlite:///{tmp_path}/none.db", " "), "a key must be non-empty")
    assert run("delete", f"sqlite:///{tmp_path}/none.db").exit_code == 2  # no key: a usage error


def test_memory_urls_say_that_nothing_outlives_the_command(records_file: Path) -> None:
    warmed = run("warm", "memory://", str(records_file), "--embedder", FAKE_EMBEDDER)
    assert warmed.exit_code == 0 and "vanishes when the command exits" in warmed.stderr
    assert "sqlite:///path/to/cache.db or redis://" in warmed.stderr
    for command in (["stats", "memory://"], ["inspect", "memory://"], ["export", "memory://", "-"],
                    ["clear", "memory://", "--yes"], ["delete", "memory://", "a:b"]):  # fmt: skip
        result = run(*command)
        assert "never holds what an earlier command stored" in result.stderr, (command, result.output)
        assert "sqlite:///path/to/cache.db" in result.stderr
    assert "no entries in memory://" in run("inspect", "memory://").stdout
    named = run("stats", f"memory://cli-{uuid.uuid4().hex}")  # memory://NAME too: each command is a new process
    assert named.exit_code == 0 and "note: memory://" in named.stderr


def test_counts_agree_with_their_nouns(tmp_path: Path, records_file: Path) -> None:
    url = f"sqlite:///{tmp_path}/cache.db"
    one = write_jsonl(tmp_path / "one.jsonl", RECORDS[:1])
    assert "stored 1 entry from 1 record in" in warm(url, one).stdout
    assert "1 of 1 entry, newest first" in run("inspect", url).stdout
    backup = tmp_path / "backup.jsonl"
    assert "exported 1 entry to" in run("export", url, str(backup)).stderr
    assert "deleted 1 entry" in run("clear", url, "--yes").stdout
    assert "imported 1 entry into" in run("import", url, str(backup)).stdout
    assert "Delete 1 entry from" in run("clear", url, input="n\n").stdout
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"text_a": "a b", "text_b": "a c", "label": 1}])
    calibrated = run("calibrate", str(pairs), "--embedder", FAKE_EMBEDDER)
    assert "1 pair (1 same meaning), 1 stored prompt" in calibrated.stdout, calibrated.output


def sweep_row(threshold: float, correct: int, wrong: int, guard: bool = True) -> Any:
    from semantic_llm_cache.calibration import SweepRow

    hits = correct + wrong
    precision = correct / hits if hits else 1.0
    return SweepRow(threshold, guard, 100, hits, correct, wrong, precision, hits / 100, 0.5, 0.5)


def test_a_wrong_hit_among_a_handful_at_the_top_does_not_veto_every_lower_threshold() -> None:
    from semantic_llm_cache.calibration import CalibrationReport

    # As on the committed QQP sample: one wrong pair scores 0.99, so it is 1 of 7 hits there (0.857) and
    # 1 of 15 at 0.98 (0.933); the old rule ("every stricter threshold keeps the target") recommended 0.995.
    rows = [sweep_row(0.94, 25, 4), sweep_row(0.96, 20, 2), sweep_row(0.98, 14, 1), sweep_row(0.99, 6, 1),
            sweep_row(0.995, 2, 0)]  # fmt: skip
    report = CalibrationReport(rows, 100, 50, 100, "test")
    assert report.recommend(0.9, min_hits=1).threshold == 0.995  # judging every threshold: the old answer
    assert report.recommend(0.9, min_hits=10).threshold == 0.96  # 0.94 (0.862 on 29) stops the search
    assert report.recommend(0.9).threshold == 0.96  # the default: at least 20 labeled hits
    assert report.recommend(0.9, min_hits=30) is None
    assert rows[2].labeled_hits == 15


def test_calibrate_states_its_rule_and_what_stopped_it(tmp_path: Path) -> None:
    from semantic_llm_cache.calibration import load_pairs, sweep

    pairs_file = tmp_path / "pairs.jsonl"
    write_jsonl(
        pairs_file,
        [{"text_a": f"how do i reset password number {n}", "text_b": f"how do i reset password number {n} now",
          "label": 1} for n in range(15)]
        + [{"text_a": f"opening hours of shop {n}", "text_b": f"opening hours of the shop {n}", "label": 0}
           for n in range(5)],
    )  # fmt: skip
    result = run("calibrate", str(pairs_file), "--embedder", FAKE_EMBEDDER, "--min-hits", "5")
    assert result.exit_code == 0, result.output
    assert "rule: the lowest threshold whose precision reaches 0.9 and stays at or above it at every stricter " in (
        result.stdout
    )
    assert "with at least 5 labeled hits" in result.stdout
    report = asyncio.run(sweep(load_pairs(pairs_file), BagOfWordsEmbedder()))
    for guard, label in ((True, "with the answer guard"), (False, "without the guard")):
        row = report.recommend(0.9, guard=guard, min_hits=5)
        assert row is not None and f"recommended threshold {label}: {row.threshold:.3f}" in result.stdout
        table_row = next(
            line for line in result.stdout.splitlines() if line.strip("│ ").startswith(f"{row.threshold:.3f}")
        )
        assert table_row  # the recommended threshold is a row of the table
        judged = [r for r in report.rows if r.guard == guard and r.labeled_hits >= 5 and r.threshold >= row.threshold]
        assert all(r.precision >= 0.9 for r in judged)


COMMANDS = ("demo", "stats", "inspect", "clear", "delete", "calibrate", "warm", "export", "import")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_reads_as_plain_words(command: str | None) -> None:
    result = run(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for typer_ism in ("<bool>", "<str>", "<int", "<float", "<path>", "{URL}", "{KEY", "x>=", "<=x"):
        assert typer_ism not in text, (typer_ism, text)
    assert "--help" in text and "Show this message and exit." in text
    if command in ("stats", "inspect", "clear", "delete", "warm", "export", "import"):
        assert f"{command} [OPTIONS] URL" in text
    if command == "delete":
        assert "URL KEY..." in text and "1 if any was not found" in text
    if command == "warm":
        assert "--for" in text and "INTEGRATION" in text and "MODULE:ATTRIBUTE" in text and "SECONDS" in text
    if command == "calibrate":
        assert "PRECISION" in text and "--min-hits" in text and "Exit code 2" in text
    if command is None:
        for name in COMMANDS:
            assert name in text
