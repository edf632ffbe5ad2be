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
from semantic_llm_cache.errors import CacheBackendError
from tests.fakes import BagOfWordsEmbedder

REPOSITORY = Path(__file__).resolve().parents[1]
QQP = REPOSITORY.parent / "shared" / "data" / "qqp_dev.jsonl"
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


def assert_one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
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
    assert nothing.exit_code == 0 and "deleted 0 entries" in nothing.stdout


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
    assert (
        result.exit_code == 0 and "imported 1 entries" in result.stdout and "skipped 1 already expired" in result.stdout
    )
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
        (["calibrate", str(missing_file)], ("no such file",)),
        (["warm", "memory://", str(records_file), "--embedder", "no_such_module:Thing"], ("cannot load embedder",)),
        (["warm", "memory://", str(records_file), "--embedder", "nonsense"], ('"bundled" or "module:attribute"',)),
        (["calibrate", str(records_file), "--target-precision", "1.5"], ("--target-precision must be",)),
        (["export", f"sqlite:///{not_a_db}", str(tmp_path / "out.jsonl")], ("not a usable SQLite cache",)),
    ]
    for arguments, fragments in cases:
        assert_one_line_error(run(*arguments), *fragments)
    assert not missing_db.exists() and not (tmp_path / "out.jsonl").exists()


def calibration_sample(path: Path, per_label: int = 15) -> Path:
    """A small labeled file: the first `per_label` pairs of each label from the shared QQP sample."""
    chosen: dict[int, list[str]] = {0: [], 1: []}
    with QQP.open(encoding="utf-8") as source:
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
    assert_one_line_error(run("calibrate", str(path), "--embedder", FAKE_EMBEDDER), f"{path}:2:")


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
    environment = {**os.environ, "COLUMNS": "200"}

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
    for command in ("demo", "stats", "inspect", "clear", "calibrate", "warm", "export", "import"):
        assert command in usage.stdout
