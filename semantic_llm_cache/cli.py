"""The `semantic-llm-cache` command: look inside a cache, tune its threshold, warm it, back it up and restore it.

Every command that touches a cache takes a backend URL (memory://, sqlite:///path/to/cache.db,
redis://host:6379/0; see semantic_llm_cache.backends.url). Mistakes a user can make (a missing file, a malformed
line, an unreachable server, an unknown URL scheme) print one line starting with "error:" and exit with code 1.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from semantic_llm_cache.backends.url import backend_from_url
from semantic_llm_cache.config import CacheEntry, validate_threshold, validate_ttl
from semantic_llm_cache.errors import ConfigurationError, InvalidInputError, SemanticCacheError
from semantic_llm_cache.scope import Scope, normalize_prompt, partition_of_key
from semantic_llm_cache.serialization import check_json_value, entry_from_dict, entry_to_dict
from semantic_llm_cache.storage import StorageBackend

T = TypeVar("T")

app = typer.Typer(
    name="semantic-llm-cache",
    help="Look inside a semantic LLM cache, tune its threshold, warm it, back it up and restore it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

URL_HELP = "Backend URL: memory://, sqlite:///path/to/cache.db (relative; //// for absolute), redis://host:6379/0"
UrlArgument = Annotated[str, typer.Argument(metavar="URL", help=URL_HELP, show_default=False)]
NamespaceOption = Annotated[str | None, typer.Option("--namespace", "-n", help="Only this namespace (tenant).")]
EmbedderOption = Annotated[
    str,
    typer.Option(
        "--embedder",
        help='"bundled" (the all-MiniLM-L6-v2 model shipped with the package) or "module:attribute" naming an '
        "embedder object, class or callable importable from the current directory.",
    ),
]
WARM_FIELDS = ("prompt", "response", "namespace", "model", "ttl", "metadata")


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


def _fail(message: str) -> NoReturn:
    one_line = " ".join(str(message).split())
    typer.echo(f"error: {one_line}", err=True)
    raise typer.Exit(1)


def _run(main: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; turn the errors a user can cause into one line and exit code 1."""
    try:
        return asyncio.run(main)
    except (UserError, SemanticCacheError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))


def _out() -> Console:
    return Console(highlight=False)


def _status() -> Console:
    """Progress bars and notes go to stderr, so `export URL -` can pipe the entries on stdout."""
    return Console(stderr=True, highlight=False)


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_status(),
        transient=True,  # gone when done: what stays is the result line (or the one error line)
    )


def _open_backend(url: str, *, must_exist: bool) -> StorageBackend:
    """The backend for `url`; for commands that only read or delete, a missing SQLite file is an error."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    options: dict[str, Any] = {"create": False} if must_exist and scheme == "sqlite" else {}
    return backend_from_url(url, **options)


def _note_if_ephemeral(url: str) -> None:
    if url.lower().startswith("memory://"):
        _status().print("note: a memory:// backend lives only inside this process; its entries go when it exits")


async def _using(url: str, must_exist: bool, work: Callable[[StorageBackend], Awaitable[T]]) -> T:
    backend = _open_backend(url, must_exist=must_exist)
    try:
        return await work(backend)
    finally:
        await backend.close()


def load_embedder(spec: str) -> Any:
    """The embedder named on the command line: "bundled", or "module:attribute" (a class is instantiated)."""
    if spec == "bundled":
        from semantic_llm_cache.cache import default_embedder

        return default_embedder()
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f'--embedder must be "bundled" or "module:attribute", got {spec!r}')
    if os.getcwd() not in sys.path:  # like `python -m`, resolve user modules from the working directory
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot load embedder {spec!r}: {exc}") from exc
    return target() if isinstance(target, type) else target


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line; a missing or unreadable file is a UserError."""
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    try:
        with path.open(encoding="utf-8") as source:
            return [(number, line) for number, line in enumerate(source, start=1) if line.strip()]
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text: {exc}") from exc


def _json_object(path: Path, number: int, line: str, consequence: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise UserError(f"{path} line {number}: not valid JSON ({exc}); {consequence}") from exc
    if not isinstance(record, dict):
        kind = type(record).__name__
        raise UserError(f"{path} line {number}: expected a JSON object, got {kind}; {consequence}")
    return record


def _human_seconds(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns


# -- demo ------------------------------------------------------------------------------------------------


@app.command()
def demo() -> None:
    """Store a few answers with the bundled model, then show an exact hit, a semantic hit and misses."""
    from semantic_llm_cache.demo import main

    main()


# -- stats -----------------------------------------------------------------------------------------------


@app.command()
def stats(
    url: UrlArgument,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as one JSON object.")] = False,
) -> None:
    """Show the backend's statistics: size, partitions, evictions, file size..."""
    values = _run(_using(url, True, lambda backend: backend.get_stats()))
    if as_json:
        typer.echo(json.dumps(values, default=str))
        return
    table = Table(title=f"cache {url}")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for name, value in values.items():
        shown = _human_bytes(value) if name.endswith("bytes") and isinstance(value, int) else str(value)
        table.add_row(name, shown)
    _out().print(table)


# -- inspect ---------------------------------------------------------------------------------------------


@app.command()
def inspect(
    url: UrlArgument,
    namespace: NamespaceOption = None,
    limit: Annotated[int, typer.Option("--limit", "-l", min=1, help="Show at most this many entries.")] = 20,
) -> None:
    """List entries, newest first: prompt, namespace, partition, age, hits and expiry."""
    entries = _run(_using(url, True, lambda backend: backend.iterate(namespace)))
    entries.sort(key=lambda item: item[1].created_at, reverse=True)
    now = time.time()
    where = f" in namespace {namespace!r}" if namespace else ""
    table = Table(title=f"{min(limit, len(entries))} of {len(entries)} entries{where}, newest first")
    table.add_column("prompt", overflow="ellipsis", no_wrap=True, max_width=60)
    table.add_column("namespace", no_wrap=True)
    table.add_column("partition", no_wrap=True)
    table.add_column("age", justify="right")
    table.add_column("hits", justify="right")
    table.add_column("expires", justify="right", no_wrap=True)
    for _key, entry in entries[:limit]:
        remaining = entry.ttl_remaining(now)
        table.add_row(
            entry.prompt,
            entry.namespace,
            entry.partition_id[:12],
            _human_seconds(max(0.0, now - entry.created_at)),
            str(entry.hits),
            "never" if remaining is None else f"in {_human_seconds(remaining)}",
        )
    _out().print(table)


# -- clear -----------------------------------------------------------------------------------------------


@app.command()
def clear(
    url: UrlArgument,
    namespace: NamespaceOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every entry (or one namespace's), after asking unless --yes is given."""

    async def work(backend: StorageBackend) -> int:
        # without a namespace the backend counts, without decoding every entry
        count = len(await backend.iterate(namespace)) if namespace else int((await backend.get_stats())["size"])
        if count == 0:
            return 0
        what = f"{count} entries" + (f" of namespace {namespace!r}" if namespace else "")
        if not yes:
            try:
                confirmed = typer.confirm(f"Delete {what} from {url}?", default=False)
            except typer.Abort:  # no terminal to answer from
                confirmed = False
            if not confirmed:
                raise UserError(f"not confirmed; nothing was deleted (pass --yes to delete {what} without asking)")
        await backend.clear(namespace)
        return count

    deleted = _run(_using(url, True, work))
    _out().print(f"deleted {deleted} entries" + (f" of namespace {namespace!r}" if namespace else ""))


# -- calibrate -------------------------------------------------------------------------------------------


def _fraction(value: float) -> str:
    return f"{value:.3f}"


@app.command()
def calibrate(
    pairs_file: Annotated[
        Path,
        typer.Argument(
            metavar="PAIRS.jsonl",
            help='Labeled pairs, one JSON object a line: {"text_a": ..., "text_b": ..., "label": 0 or 1}.',
            show_default=False,
        ),
    ],
    target_precision: Annotated[
        float, typer.Option("--target-precision", help="Precision the recommended threshold must reach.")
    ] = 0.9,
    plot: Annotated[
        Path | None, typer.Option("--plot", metavar="OUT.png", help="Write precision and hit rate against threshold.")
    ] = None,
    embedder_spec: EmbedderOption = "bundled",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N pairs.")] = None,
    step: Annotated[float, typer.Option("--step", min=0.005, help="Threshold step of the printed table.")] = 0.02,
) -> None:
    """Sweep thresholds on labeled pairs and recommend the lowest one that meets the target precision."""
    from semantic_llm_cache.calibration import load_pairs, plot_report, sweep

    try:
        validate_threshold(target_precision, "--target-precision")
    except ConfigurationError as exc:
        _fail(str(exc))

    async def work() -> Any:
        pairs = load_pairs(pairs_file, limit=limit)
        embedder = load_embedder(embedder_spec)
        from semantic_llm_cache.embeddings.adapters import as_embedder

        with _progress() as progress:
            task = progress.add_task(f"embedding {len(pairs)} pairs", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return await sweep(pairs, as_embedder(embedder), progress=advance)

    report = _run(work())
    recommended = {guard: report.recommend(target_precision, guard=guard) for guard in (True, False)}
    shown = {row.threshold for row in report.rows if abs(row.threshold / step - round(row.threshold / step)) < 1e-6}
    shown |= {row.threshold for row in recommended.values() if row is not None}
    sample = f"{report.pairs} pairs ({report.positives} same meaning), {report.stored} stored prompts"
    table = Table(title=f"{sample}, {report.embedder}")
    table.add_column("threshold", justify="right")
    for guard_name in ("guard off", "guard on"):
        for metric in ("hit rate", "precision", "F1"):
            table.add_column(f"{metric}\n{guard_name}", justify="right")
    by_threshold: dict[float, dict[bool, Any]] = {}
    for row in report.rows:
        by_threshold.setdefault(row.threshold, {})[row.guard] = row
    for threshold in sorted(shown):
        cells = [f"{threshold:.3f}"]
        for guard in (False, True):
            row = by_threshold[threshold][guard]
            cells += [_fraction(row.hit_rate), _fraction(row.precision) if row.hits else "-", _fraction(row.f1)]
        style = "bold green" if recommended[True] is not None and threshold == recommended[True].threshold else None
        table.add_row(*cells, style=style)
    console = _out()
    console.print(table)
    for guard in (True, False):
        label = "with the answer guard" if guard else "without the guard"
        chosen = recommended[guard]
        if chosen is None:
            console.print(f"no threshold reaches precision {target_precision} {label} on this sample")
        else:
            console.print(
                f"recommended threshold {label}: {chosen.threshold:.3f} (precision {chosen.precision:.3f}, "
                f"hit rate {chosen.hit_rate:.3f}, F1 {chosen.f1:.3f}) for target precision {target_precision}"
            )
    if plot is not None:
        try:
            written = plot_report(report, plot, target_precision)
        except ImportError as exc:
            _fail(f"--plot needs matplotlib: pip install 'async-semantic-llm-cache[plot]' ({exc})")
        except OSError as exc:
            _fail(f"cannot write the plot to {plot}: {exc.strerror or exc}")
        console.print(f"plot written to {written}")


# -- warm ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmRecord:
    """One line of a warm file, checked."""

    prompt: str
    response: Any
    namespace: str | None
    model: str | None
    ttl: float | None
    metadata: dict[str, Any] | None


def parse_warm_record(path: Path, number: int, line: str) -> WarmRecord:
    """Check one line of a warm file; UserError names the line."""
    record = _json_object(path, number, line, "nothing was written")
    where = f"{path} line {number}"
    unknown = sorted(set(record) - set(WARM_FIELDS))
    if unknown:
        raise UserError(
            f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(WARM_FIELDS)}); nothing was written"
        )
    for required in ("prompt", "response"):
        if required not in record:
            raise UserError(f"{where}: missing {required!r}; nothing was written")
    try:
        normalize_prompt(record["prompt"])
        check_json_value(record["response"])
        namespace, model = record.get("namespace"), record.get("model")
        if namespace is not None and (not isinstance(namespace, str) or not namespace.strip()):
            raise InvalidInputError(f"namespace must be a non-empty string, got {namespace!r}")
        if model is not None and not isinstance(model, str):
            raise InvalidInputError(f"model must be a string, got {model!r}")
        ttl = validate_ttl(record.get("ttl"))
        metadata = record.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise InvalidInputError(f"metadata must be an object, got {type(metadata).__name__}")
            check_json_value(metadata, "metadata")
    except SemanticCacheError as exc:
        raise UserError(f"{where}: {exc}; nothing was written") from exc
    return WarmRecord(record["prompt"], record["response"], namespace, model, ttl, metadata)


@app.command()
def warm(
    url: UrlArgument,
    records_file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.jsonl",
            help='One JSON object a line: {"prompt": ..., "response": ...} and optionally "namespace", "model", '
            '"ttl" (seconds) and "metadata".',
            show_default=False,
        ),
    ],
    embedder_spec: EmbedderOption = "bundled",
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="Namespace of records that name none.")] = (
        "default"
    ),
    ttl: Annotated[float | None, typer.Option("--ttl", help="Seconds each entry lives (default: forever).")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Records embedded at once.")] = 64,
) -> None:
    """Bulk-load prompt/response records, embedded with the cache's embedder (the whole file is checked first).

    Each record lands in the partition of Scope(namespace, model): the one the cache serves calls with that
    namespace and model and no other call parameters or context.
    """
    from semantic_llm_cache.cache import SemanticCache

    async def work() -> tuple[int, int]:
        records = [parse_warm_record(records_file, number, line) for number, line in _read_lines(records_file)]
        default_ttl = validate_ttl(ttl, "--ttl")
        # A prompt repeated in the same namespace and model is one entry: the last record wins, as in the file.
        latest = {(r.namespace or namespace, r.model, normalize_prompt(r.prompt)): r for r in records}
        embedder = load_embedder(embedder_spec)
        backend = _open_backend(url, must_exist=False)
        cache = SemanticCache(backend=backend, embedder=embedder, namespace=namespace, ttl=default_ttl,
                              on_error="raise")  # fmt: skip
        stored = 0
        failures: list[SemanticCacheError] = []
        try:
            with _progress() as progress:
                loading = progress.add_task(f"loading embedder {cache.embedder.name}", total=None)
                await cache.warmup()
                progress.remove_task(loading)
                task = progress.add_task(f"warming {url}", total=len(latest))
                gate = asyncio.Semaphore(concurrency)  # concurrent stores let the embedder batch its work

                async def store(record: WarmRecord) -> None:
                    nonlocal stored
                    async with gate:
                        if failures:  # after a failure no new store starts; those under way finish
                            return
                        scope = Scope(namespace=record.namespace, model=record.model)
                        try:
                            await cache.store(record.prompt, record.response, scope, record.ttl, record.metadata)
                        except SemanticCacheError as exc:
                            failures.append(exc)
                            return
                    stored += 1
                    progress.advance(task)

                await asyncio.gather(*(store(record) for record in latest.values()))
        finally:
            await cache.close()
        if failures:
            raise UserError(
                f"stored {stored} of {len(latest)} entries, then failed: {failures[0]}; "
                "running warm again is safe: it replaces the same entries"
            )
        return len(records), stored

    count, stored = _run(work())
    repeated = f" ({count - stored} repeated an earlier prompt: the last one was kept)" if stored < count else ""
    _out().print(f"stored {stored} entries from {count} records in {url}{repeated}")
    _note_if_ephemeral(url)


# -- export / import -------------------------------------------------------------------------------------


def export_line(key: str, entry: CacheEntry) -> str:
    """One line of an export file: the entry's versioned JSON (vector as base64 float32) and its key."""
    return json.dumps({"key": key, **entry_to_dict(entry)}, ensure_ascii=False, allow_nan=False)


def parse_export_line(path: Path, number: int, line: str) -> tuple[str, CacheEntry]:
    """Inverse of export_line; UserError names the line."""
    record = _json_object(path, number, line, "nothing was imported")
    where = f"{path} line {number}"
    key = record.pop("key", None)
    if not isinstance(key, str):
        raise UserError(f'{where}: missing the entry\'s "key" (a string); nothing was imported')
    try:
        entry = entry_from_dict(record)
        if partition_of_key(key) != entry.partition_id:
            raise InvalidInputError(f"key {key!r} is not in the entry's partition {entry.partition_id!r}")
    except SemanticCacheError as exc:
        raise UserError(f"{where}: {exc}; nothing was imported") from exc
    return key, entry


@app.command()
def export(
    url: UrlArgument,
    output: Annotated[
        Path, typer.Argument(metavar="FILE.jsonl", help='Where to write the entries ("-": stdout).', show_default=False)
    ],
    namespace: NamespaceOption = None,
) -> None:
    """Back up the live entries as JSON lines, vectors included (written to a temporary file, then renamed)."""
    entries = _run(_using(url, True, lambda backend: backend.iterate(namespace)))
    lines = [export_line(key, entry) + "\n" for key, entry in entries]
    if str(output) == "-":
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
        return
    partial = output.with_name(output.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as sink:
            sink.writelines(lines)
        os.replace(partial, output)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    _status().print(f"exported {len(lines)} entries to {output}")


@app.command("import")
def import_entries(
    url: UrlArgument,
    source: Annotated[
        Path, typer.Argument(metavar="FILE.jsonl", help="A file written by `export`.", show_default=False)
    ],
) -> None:
    """Restore entries written by `export`; the whole file is checked before anything is written."""

    async def work() -> tuple[int, int]:
        entries = [(number, *parse_export_line(source, number, line)) for number, line in _read_lines(source)]
        backend = _open_backend(url, must_exist=False)
        imported = expired = 0
        now = time.time()
        line_number = 0
        try:
            with _progress() as progress:
                task = progress.add_task(f"importing into {url}", total=len(entries))
                for number, key, entry in entries:
                    line_number = number
                    if entry.is_expired(now):
                        expired += 1
                    else:
                        await backend.set(key, entry)
                        imported += 1
                    progress.advance(task)
        except SemanticCacheError as exc:
            raise UserError(
                f"{source} line {line_number}: failed after importing {imported} of {len(entries)} entries "
                f"(every line before it is in the cache, none after): {exc}"
            ) from exc
        finally:
            await backend.close()
        return imported, expired

    imported, expired = _run(work())
    skipped = f"; skipped {expired} already expired" if expired else ""
    _out().print(f"imported {imported} entries into {url}{skipped}")
    _note_if_ephemeral(url)
