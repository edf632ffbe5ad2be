"""The `semantic-llm-cache` command: look inside a cache, tune its threshold, warm it, back it up and restore it.

Every command that touches a cache takes a backend URL (memory://, sqlite:///path/to/cache.db,
redis://host:6379/0; see semantic_llm_cache.backends.url). Each command is a new process, so a memory:// store
starts empty and vanishes when the command exits: those commands say so on stderr. Mistakes a user can make (a
missing file, a malformed line, an unreachable server, an unknown URL scheme) print one line starting with
"error:" and exit with code 1; so does anything else that goes wrong inside a command (never a traceback). Two
exceptions, each stated in its --help: `calibrate` exits with 2 when its pairs file cannot be used, and `delete`
with 1 when a key was not found (after deleting the others). Input files are read whole and every line is checked
before anything is written; a bad line's error names the file and the line.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import functools
import importlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar, cast

import click
import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from semantic_llm_cache.backends.url import backend_from_url
from semantic_llm_cache.calibration import DEFAULT_MIN_HITS
from semantic_llm_cache.config import MAX_TTL, CacheEntry, validate_ttl
from semantic_llm_cache.embeddings.adapters import as_embedder
from semantic_llm_cache.embeddings.base import Embedder, Matrix, normalized_matrix
from semantic_llm_cache.errors import ConfigurationError, EmbeddingError, InvalidInputError, SemanticCacheError
from semantic_llm_cache.scope import Scope, normalize_prompt, partition_of_key
from semantic_llm_cache.serialization import entry_from_dict, entry_to_dict
from semantic_llm_cache.storage import StorageBackend
from semantic_llm_cache.values import MAX_JSON_DEPTH, check_json_value, check_text

if TYPE_CHECKING:
    from semantic_llm_cache.calibration import CalibrationReport, LabeledPair, SweepRow

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _plain_help(param: Any) -> Any:
    """`param`, shown in --help as plain words: no <str>/<bool> type after a name, an argument as its name
    (URL, not {URL}), a flag as the flag alone, and no [x>=1] (the help text says the bounds)."""
    if not getattr(param, "_plain_help", False):
        base = type(param)
        if base not in _PLAIN_CLASSES:
            _PLAIN_CLASSES[base] = _plain_class(base)
        param.__class__ = _PLAIN_CLASSES[base]
    return param


_PLAIN_CLASSES: dict[type, type] = {}


def _plain_class(base: type) -> type:
    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if self.param_type_name == "argument" or getattr(self, "is_flag", False) or getattr(self, "count", False):
            return None  # an argument's name is its metavar already; a flag takes no value
        return str(self.metavar or (self.name or "value").upper())

    def usage_name(self: Any) -> str:
        name = str(self.metavar or (self.name or "value").upper())
        if self.nargs != 1 and not name.endswith("..."):
            name += "..."
        return name if self.required else f"[{name}]"

    def no_range(self: Any) -> None:
        return None

    # The hooks typer (0.2x) formats help with; on a typer without them they are simply never called.
    hooks = {"display_type_rich": display_type_rich, "_usage_display_name": usage_name,
             "_get_number_range_help_str": no_range, "_plain_help": True}  # fmt: skip
    return type(base.__name__, (base,), hooks)


class _PlainHelpCommand(TyperCommand):
    """A command whose --help reads as plain words (see `_plain_help`)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return [_plain_help(param) for param in super().get_params(ctx)]


class _PlainHelpGroup(TyperGroup):
    """The command group, with the same plain --help."""

    def get_params(self, ctx: Any) -> list[Any]:
        return [_plain_help(param) for param in super().get_params(ctx)]


app = typer.Typer(
    name="semantic-llm-cache",
    cls=_PlainHelpGroup,
    help="Look inside a semantic LLM cache, tune its threshold, warm it, back it up and restore it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

URL_HELP = "Backend URL: memory://, sqlite:///path/to/cache.db (relative; //// for absolute), redis://host:6379/0"
UrlArgument = Annotated[str, typer.Argument(metavar="URL", help=URL_HELP, show_default=False)]
NamespaceOption = Annotated[
    str | None, typer.Option("--namespace", "-n", metavar="NAME", help="Only this namespace (tenant).")
]
EmbedderOption = Annotated[
    str,
    typer.Option(
        "--embedder",
        metavar="EMBEDDER",
        help='"bundled" (the all-MiniLM-L6-v2 model shipped with the package) or "module:attribute" naming an '
        "embedder object, class or callable importable from the current directory.",
    ),
]
TunedOption = Annotated[
    Path | None,
    typer.Option(
        "--tuned",
        metavar="DIR",
        help="A folder written by `semantic-llm-cache tune`: use its tuned embedder (instead of --embedder).",
        show_default=False,
    ),
]
WARM_FIELDS = ("prompt", "response", "namespace", "model", "ttl", "metadata")
PAIR_FORMAT = '{"text_a": "...", "text_b": "...", "label": 0 or 1}'
_MAX_COUNT = 2**63  # hits and tokens are stored as 64-bit integers (SQLite INTEGER)


class UserError(Exception):
    """A mistake the user can fix; printed as one line, then exit with `exit_code`."""

    exit_code = 1


class PairsFileError(UserError):
    """calibrate's pairs file cannot be used (missing, unreadable, or a line that is not a labeled pair)."""

    exit_code = 2


# Exceptions that carry click's own exit (typer.Exit, --help, a usage error, an answered prompt): let them through.
_CLICK_EXITS: tuple[type[BaseException], ...] = (
    typer.Exit,
    typer.Abort,
    click.exceptions.Exit,
    click.exceptions.Abort,
    click.ClickException,
)


def _plain(text: object) -> str:
    """`text` as a str any terminal can print: lone surrogates (undecodable bytes) become backslash escapes."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _fail(message: str, exit_code: int = 1) -> NoReturn:
    one_line = " ".join(_plain(message).split())
    typer.echo(f"error: {one_line}", err=True)
    raise typer.Exit(exit_code)


def _os_error(exc: OSError) -> str:
    return f"{exc.strerror or exc}: {_plain(exc.filename)}" if exc.filename else str(exc)


def _one_line_errors(command: F) -> F:
    """Decorate a command: whatever goes wrong inside it is printed as one "error:" line with exit code 1.

    The package's own errors (SemanticCacheError: bad input, configuration, backend or embedder) and UserError
    carry a message written for the user; an OSError names its file. Anything else is a bug, but still one line.
    """

    @functools.wraps(command)
    def run_command(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except _CLICK_EXITS:
            raise
        except UserError as exc:
            _fail(str(exc), exc.exit_code)
        except SemanticCacheError as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(_os_error(exc))
        except RecursionError:
            _fail(f"the input nests lists and objects too deeply (at most {MAX_JSON_DEPTH} levels)")
        except Exception as exc:
            _fail(
                f"unexpected {type(exc).__name__}: {exc} (this is a bug in semantic-llm-cache or in the embedder "
                "given; please report it with the command that caused it)"
            )

    return cast(F, run_command)


def _described(exc: Exception) -> str:
    """An error for a message: the package's own errors speak for themselves; others also say their type."""
    return str(exc) if isinstance(exc, (SemanticCacheError, UserError)) else f"{type(exc).__name__}: {exc}"


def _run(main: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine (its errors become one line in `_one_line_errors`)."""
    return asyncio.run(main)


def _out() -> Console:
    # No markup or emoji codes: prompts, namespaces, paths and URLs are shown exactly as they are.
    return Console(highlight=False, markup=False, emoji=False)


def _status() -> Console:
    """Progress bars and notes go to stderr, so `export URL -` can pipe the entries on stdout."""
    return Console(stderr=True, highlight=False, markup=False, emoji=False)


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_status(),
        transient=True,  # gone when done: what stays is the result line (or the one error line)
    )


def _check_namespace(namespace: str | None, option: str = "--namespace") -> None:
    """A namespace option must be non-empty text (an empty one would not mean "every namespace")."""
    if namespace is None:
        return
    if not namespace.strip():
        raise UserError(f"{option} must be a non-empty namespace name, got {namespace!r}")
    try:
        check_text(namespace, option)
    except InvalidInputError as exc:
        raise UserError(str(exc)) from None


def _open_backend(url: str, *, must_exist: bool) -> StorageBackend:
    """The backend for `url`; for commands that only read or delete, a missing SQLite file is an error."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    options: dict[str, Any] = {"create": False} if must_exist and scheme == "sqlite" else {}
    return backend_from_url(url, **options)


def _count(number: int, singular: str, plural: str | None = None) -> str:
    """`number` and the noun agreeing with it: "no entries", "1 entry", "2 entries"."""
    noun = singular if number == 1 else (plural or singular + "s")
    return f"{'no' if number == 0 else number} {noun}"


def _entries(number: int) -> str:
    return _count(number, "entry", "entries")


_KEEP_IT = "to keep entries between commands, use sqlite:///path/to/cache.db or redis://host:6379/0"


def _note_if_ephemeral(url: str, *, wrote: bool) -> None:
    """Each command is a new process, so a memory:// store neither keeps what it writes nor sees earlier writes."""
    if not url.lower().startswith("memory://"):
        return
    if wrote:
        note = "note: memory:// lives only inside this command: what it wrote vanishes when the command exits; "
    else:
        note = (
            "note: memory:// is a new, empty store in each command, so it never holds what an earlier command stored; "
        )
    typer.echo(note + _KEEP_IT, err=True)


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
    except Exception as exc:  # the module itself failed while being imported
        raise ConfigurationError(f"cannot load embedder {spec!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(target, type):
        return target
    try:
        return target()
    except Exception as exc:
        raise ConfigurationError(
            f"cannot create embedder {spec!r}: {target.__name__}() failed with {type(exc).__name__}: {exc}"
        ) from exc


def _tuned_embedder(directory: Path) -> Any:
    from semantic_llm_cache.tuned import tuned_embedder

    return tuned_embedder(directory)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line of a UTF-8 file (a BOM is allowed); else a UserError."""
    if not path.exists():
        raise UserError(f"no such file: {path}")
    if not path.is_file():
        raise UserError(f"not a file: {path}")
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        raise UserError(
            f"{path} line {number}: not UTF-8 text (byte {data[exc.start]:#04x}: {exc.reason}); save the file as "
            "UTF-8 and run again; nothing was read"
        ) from None
    # Universal newlines, as text mode reads them (\n, \r\n, \r); never str.splitlines, which would also split
    # inside a JSON string at U+2028 and other characters JSON allows there.
    lines = io.StringIO(text, newline=None)
    return [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]


def _json_object(path: Path, number: int, line: str, consequence: str) -> dict[str, Any]:
    where = f"{path} line {number}"
    try:
        record = json.loads(line)
    except RecursionError:
        raise UserError(
            f"{where}: lists and objects nest too deeply to read (at most {MAX_JSON_DEPTH} levels); {consequence}"
        ) from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's limit on the digits of an int
            raise UserError(
                f"{where}: holds an integer with too many digits (at most 4300); write it as a string; {consequence}"
            ) from None
        raise UserError(f"{where}: not valid JSON ({exc}); {consequence}") from exc
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {_json_kind(record)}; {consequence}")
    return record


def _json_kind(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words (never printing a huge or deep value)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    return "number"


def _shown(value: Any) -> str:
    """A decoded JSON value for an error message: short, on one line, and never a huge number written out."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {len(str(abs(value)))} digits"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        shown = repr(value)
        return shown if len(shown) <= 60 else shown[:57] + "...'"
    return f"a{'n' if isinstance(value, dict) else ''} {_json_kind(value)}"


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


@app.command(cls=_PlainHelpCommand)
@_one_line_errors
def demo() -> None:
    """Store a few answers with the bundled model, then show an exact hit, a semantic hit and misses."""
    from semantic_llm_cache.demo import main

    main()


# -- stats -----------------------------------------------------------------------------------------------


@app.command(cls=_PlainHelpCommand)
@_one_line_errors
def stats(
    url: UrlArgument,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as one JSON object.")] = False,
) -> None:
    """Show the backend's statistics: size, partitions, evictions, file size..."""
    values = _run(_using(url, True, lambda backend: backend.get_stats()))
    _note_if_ephemeral(url, wrote=False)
    if as_json:
        typer.echo(json.dumps(values, default=str))
        return
    table = Table(title=f"cache {_plain(url)}")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for name, value in values.items():
        shown = _human_bytes(value) if name.endswith("bytes") and isinstance(value, int) else str(value)
        table.add_row(name, shown)
    _out().print(table)


# -- inspect ---------------------------------------------------------------------------------------------


@app.command(cls=_PlainHelpCommand)
@_one_line_errors
def inspect(
    url: UrlArgument,
    namespace: NamespaceOption = None,
    limit: Annotated[
        int, typer.Option("--limit", "-l", min=1, metavar="N", help="Show at most this many entries (at least 1).")
    ] = 20,
) -> None:
    """List entries, newest first: key, prompt, namespace, age, hits and expiry.

    The key (partition id, a colon, then a hash of the prompt) is what `delete` takes.
    """
    _check_namespace(namespace)
    entries = _run(_using(url, True, lambda backend: backend.iterate(namespace)))
    entries.sort(key=lambda item: item[1].created_at, reverse=True)
    now = time.time()
    where = f" in namespace {namespace!r}" if namespace else ""
    if not entries:
        _out().print(f"no entries{where} in {_plain(url)}")
        _note_if_ephemeral(url, wrote=False)
        return
    table = Table(title=f"{min(limit, len(entries))} of {_entries(len(entries))}{where}, newest first")
    table.add_column("key", overflow="fold")  # whole (folded on a narrow terminal): it is what `delete` takes
    table.add_column("prompt", overflow="ellipsis", no_wrap=True, max_width=60)
    table.add_column("namespace", no_wrap=True)
    table.add_column("age", justify="right")
    table.add_column("hits", justify="right")
    table.add_column("expires", justify="right", no_wrap=True)
    for key, entry in entries[:limit]:
        remaining = entry.ttl_remaining(now)
        table.add_row(
            key,
            entry.prompt,
            entry.namespace,
            _human_seconds(max(0.0, now - entry.created_at)),
            str(entry.hits),
            "never" if remaining is None else f"in {_human_seconds(remaining)}",
        )
    _out().print(table)
    _note_if_ephemeral(url, wrote=False)


# -- clear -----------------------------------------------------------------------------------------------


@app.command(cls=_PlainHelpCommand)
@_one_line_errors
def clear(
    url: UrlArgument,
    namespace: NamespaceOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking for confirmation.")] = False,
) -> None:
    """Delete every entry (or one namespace's), after asking unless --yes is given."""
    _check_namespace(namespace)

    async def work(backend: StorageBackend) -> int:
        # without a namespace the backend counts, without decoding every entry
        count = len(await backend.iterate(namespace)) if namespace else int((await backend.get_stats())["size"])
        if count == 0:
            return 0
        what = _entries(count) + (f" of namespace {namespace!r}" if namespace else "")
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
    of_namespace = f" of namespace {namespace!r}" if namespace else ""
    if deleted:
        _out().print(f"deleted {_entries(deleted)}{of_namespace}")
    else:
        _out().print(f"nothing to delete: no entries{of_namespace} in {_plain(url)}")
    _note_if_ephemeral(url, wrote=False)


# -- delete ----------------------------------------------------------------------------------------------


class _NoEmbedder:
    """`delete` embeds nothing: an embedder that says so if it is ever called (it never loads a model)."""

    name = "none"
    dimension = None

    async def embed(self, texts: Sequence[str]) -> Matrix:
        raise UserError("delete embeds nothing")  # pragma: no cover - delete_key never embeds


@app.command(cls=_PlainHelpCommand)
@_one_line_errors
def delete(
    url: UrlArgument,
    keys: Annotated[
        list[str],
        typer.Argument(
            metavar="KEY...",
            help="Keys of the entries to delete, as `inspect` lists them (and as every hit carries: CacheHit.key).",
            show_default=False,
        ),
    ],
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace", "-n", metavar="NAME", help="Delete a key only if its entry belongs to this namespace."
        ),
    ] = None,
) -> None:
    """Delete entries by key; prints "deleted" or "not found" for each key.

    Exit code 0 if every key was deleted, 1 if any was not found (nothing else is changed either way).
    """
    from semantic_llm_cache.cache import SemanticCache

    _check_namespace(namespace)
    for key in keys:
        if not key.strip():
            raise UserError(f"a key must be non-empty text (as `inspect` lists them), got {key!r}")

    async def work() -> list[tuple[str, bool]]:
        backend = _open_backend(url, must_exist=True)
        async with SemanticCache(backend=backend, embedder=_NoEmbedder(), on_error="raise") as cache:
            return [(key, await cache.delete_key(key, namespace=namespace)) for key in dict.fromkeys(keys)]

    outcomes = _run(work())
    out = _out()
    of_namespace = f" in namespace {namespace!r}" if namespace else ""
    for key, deleted in outcomes:
        out.print(f"deleted {_plain(key)}" if deleted else f"not found{of_namespace}: {_plain(key)}")
    missing = sum(not deleted for _key, deleted in outcomes)
    _note_if_ephemeral(url, wrote=False)
    if missing:
        typer.echo(
            f"{_entries(len(outcomes) - missing)} deleted; "
            f"{_count(missing, 'key')} not found{of_namespace} (see `inspect {_plain(url)}` for the keys)",
            err=True,
        )
        raise typer.Exit(1)


# -- calibrate -------------------------------------------------------------------------------------------


def _fraction(value: float) -> str:
    return f"{value:.3f}"


def _label(value: Any) -> int | None:
    """0 or 1 for a label that is exactly 0 or 1 (ints, or the floats 0.0 and 1.0); None for anything else."""
    if type(value) in (int, float) and value in (0, 1):
        return int(value)
    return None


def parse_pair(path: Path, number: int, line: str) -> LabeledPair:
    """Check one line of a calibration file; UserError names the line and says what is wrong with it."""
    from semantic_llm_cache.calibration import LabeledPair

    record = _json_object(path, number, line, f"each line is {PAIR_FORMAT}")
    where = f"{path} line {number}"
    missing = [name for name in ("text_a", "text_b", "label") if name not in record]
    if missing:
        raise UserError(
            f"{where}: missing {', '.join(map(repr, missing))}; each line needs the fields text_a, text_b and "
            f"label: {PAIR_FORMAT}"
        )
    texts = []
    for name in ("text_a", "text_b"):
        text = record[name]
        if not isinstance(text, str):
            raise UserError(f"{where}: {name} must be a string, got {_shown(text)}; each line is {PAIR_FORMAT}")
        if not text.strip():
            raise UserError(f"{where}: {name} is empty (or only whitespace); each line is {PAIR_FORMAT}")
        try:
            check_text(text, name)
        except InvalidInputError as exc:
            raise UserError(f"{where}: {exc}") from None
        texts.append(text)
    label = _label(record["label"])
    if label is None:
        raise UserError(
            f"{where}: label must be 0 (different meaning) or 1 (same meaning), got {_shown(record['label'])}"
        )
    return LabeledPair(texts[0], texts[1], label)


def load_labeled_pairs(path: Path, limit: int | None = None) -> list[LabeledPair]:
    """The labeled pairs of a calibration file (the first `limit`), every line checked; else a UserError."""
    pairs: list[LabeledPair] = []
    for number, line in _read_lines(path):
        pairs.append(parse_pair(path, number, line))
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise UserError(f"{path} holds no labeled pairs; each line is {PAIR_FORMAT}")
    return pairs


class _CheckedEmbedder:
    """An embedder whose failures are EmbeddingError and whose output is checked (shape, finite, non-zero)."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner

    @property
    def name(self) -> str:
        return str(self._inner.name)

    @property
    def dimension(self) -> int | None:
        return self._inner.dimension

    async def embed(self, texts: Sequence[str]) -> Matrix:
        try:
            raw = await self._inner.embed(texts)
        except SemanticCacheError:
            raise
        except Exception as exc:
            raise EmbeddingError(f"the embedder {self.name} failed: {type(exc).__name__}: {exc}") from exc
        normalized_matrix(raw, len(texts))  # raises EmbeddingError for the wrong shape, NaN or a zero vector
        return np.asarray(raw, dtype=np.float32)


PairsFile = Annotated[
    Path,
    typer.Argument(
        metavar="PAIRS.jsonl",
        help='Labeled pairs, one JSON object a line: {"text_a": ..., "text_b": ..., "label": 0 or 1}.',
        show_default=False,
    ),
]


@app.command(cls=_PlainHelpCommand)
@_one_line_errors
def calibrate(
    pairs_file: PairsFile,
    target_precision: Annotated[
        float,
        typer.Option(
            "--target-precision", metavar="PRECISION", help="Precision the recommended threshold must reach (0 to 1)."
        ),
    ] = 0.9,
    plot: Annotated[
        Path | None, typer.Option("--plot", metavar="OUT.png", help="Write precision and hit rate against threshold.")
    ] = None,
    embedder_spec: EmbedderOption = "bundled",
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, metavar="N", help="Use only the first N pairs.")
    ] = None,
    step: Annotated[
        float,
        typer.Option("--step", min=0.005, metavar="STEP", help="Threshold step of the printed table (0.005 to 1)."),
    ] = 0.02,
    min_hits: Annotated[
        int,
        typer.Option(
            "--min-hits",
            min=1,
            metavar="N",
            help="Judge a threshold's precision only if it rests on at least this many labeled hits.",
        ),
    ] = DEFAULT_MIN_HITS,
) -> None:
    """Sweep thresholds on labeled pairs and recommend the lowest one that meets the target precision.

    The rule: the lowest threshold whose precision reaches the target and stays at or above it at every stricter
    threshold, judging only thresholds with at least --min-hits labeled hits (near the top a threshold serves a
    handful of queries, where one wrong hit would otherwise veto every lower threshold). The table marks
    precision resting on fewer labeled hits with *, and shows the threshold that stopped the search.

    Exit code 2 if the pairs file cannot be used (missing, not UTF-8 JSON lines, or a line without "text_a",
    "text_b" and a "label" of 0 or 1; the error names the line), 1 if anything else fails.
    """
    from semantic_llm_cache.calibration import plot_report, sweep

    if not 0.0 <= target_precision <= 1.0:
        raise UserError(f"--target-precision must be a precision between 0 and 1 (e.g. 0.9), got {target_precision}")
    if not step <= 1.0:
        raise UserError(f"--step must be a number from 0.005 to 1, got {step}")

    async def work() -> Any:
        try:
            pairs = load_labeled_pairs(pairs_file, limit=limit)
        except UserError as exc:
            raise PairsFileError(str(exc)) from None
        embedder = load_embedder(embedder_spec)
        from semantic_llm_cache.embeddings.adapters import as_embedder

        with _progress() as progress:
            task = progress.add_task(f"embedding {_count(len(pairs), 'pair')}", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return await sweep(pairs, _CheckedEmbedder(as_embedder(embedder)), progress=advance)

    report = _run(work())
    recommended = {guard: report.recommend(target_precision, guard, min_hits) for guard in (True, False)}
    stopped = {guard: _stopped_at(report, recommended[guard], guard, min_hits) for guard in (True, False)}
    shown = {row.threshold for row in report.rows if abs(row.threshold / step - round(row.threshold / step)) < 1e-6}
    shown |= {row.threshold for row in [*recommended.values(), *stopped.values()] if row is not None}
    sample = (
        f"{_count(report.pairs, 'pair')} ({report.positives} same meaning), {_count(report.stored, 'stored prompt')}"
    )
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
            precision = _fraction(row.precision) + ("*" if row.labeled_hits < min_hits else "") if row.hits else "-"
            cells += [_fraction(row.hit_rate), precision, _fraction(row.f1)]
        style = "bold green" if recommended[True] is not None and threshold == recommended[True].threshold else None
        table.add_row(*cells, style=style)
    console = _out()
    console.print(table)
    console.print(f"* precision resting on fewer than {_count(min_hits, 'labeled hit')}: too few to judge (--min-hits)")
    console.print(
        f"rule: the lowest threshold whose precision reaches {target_precision} and stays at or above it at every "
        f"stricter threshold with at least {_count(min_hits, 'labeled hit')}"
    )
    for guard in (True, False):
        label = "with the answer guard" if guard else "without the guard"
        chosen = recommended[guard]
        if chosen is None:
            console.print(
                f"no threshold reaches precision {target_precision} {label} on this sample "
                f"with at least {_count(min_hits, 'labeled hit')}"
            )
            continue
        below = stopped[guard]
        why = (
            f"; below it, {below.threshold:.3f} has precision {below.precision:.3f} on "
            f"{_count(below.labeled_hits, 'labeled hit')}"
            if below is not None
            else "; every lower threshold reaches it too"
        )
        console.print(
            f"recommended threshold {label}: {chosen.threshold:.3f} (precision {chosen.precision:.3f}, "
            f"hit rate {chosen.hit_rate:.3f}, F1 {chosen.f1:.3f}) for target precision {target_precision}{why}"
        )
    if plot is not None:
        try:
            written = plot_report(report, plot, target_precision, min_hits)
        except ImportError as exc:
            _fail(f"--plot needs matplotlib: pip install 'async-semantic-llm-cache[plot]' ({exc})")
        except (OSError, ValueError) as exc:  # ValueError: a file name matplotlib cannot write (no known suffix)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            _fail(f"cannot write the plot to {plot}: {reason}")
        console.print(f"plot written to {_plain(written)}")


@app.command(cls=_PlainHelpCommand)
@_one_line_errors
def tune(
    pairs_file: PairsFile,
    out: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Folder of the tuned setup (created; reruns resume).")
    ],
    target_precision: Annotated[
        float,
        typer.Option("--target-precision", metavar="PRECISION", help="Precision the chosen thresholds must reach."),
    ] = 0.9,
    calibration_fraction: Annotated[
        float,
        typer.Option(
            "--calibration-fraction",
            metavar="FRACTION",
            help="Share of the pairs (whole groups) held out to calibrate.",
        ),
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the split and the training.")] = 0,
    epochs: Annotated[
        float | None, typer.Option("--epochs", metavar="N", help="Passes of the bi-encoder over the train part.")
    ] = None,
    cross_epochs: Annotated[
        float | None, typer.Option("--cross-epochs", metavar="N", help="Passes of the cross-encoder.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, metavar="N", help="Use only the first N pairs.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Retrain every stage even if its output is up to date.")
    ] = False,
) -> None:
    """Build a tuned setup from labeled pairs: a fine-tuned embedder, a cross-encoder verifier, and thresholds.

    Splits the pairs by connected groups of texts into train and calibration parts, fine-tunes the bundled
    bi-encoder and trains a cross-encoder from the same weights on the train part (CPU, needs the [tune] extra),
    exports both to ONNX, chooses the thresholds on the calibration part with the cache protocol for the target
    precision, and writes DIR/manifest.json and DIR/report.md (+ report.png). Serve it with
    SemanticCache.from_tuned(DIR) or tuned=DIR; that needs only the light install.

    Exit code 2 if the pairs file cannot be used, 1 if anything else fails.
    """
    import dataclasses

    from semantic_llm_cache.tune import api

    if not 0.0 < target_precision < 1.0:
        raise UserError(f"--target-precision must be a precision between 0 and 1 (e.g. 0.9), got {target_precision}")
    if not 0.0 < calibration_fraction < 1.0:
        raise UserError(f"--calibration-fraction must be between 0 and 1, got {calibration_fraction}")
    try:
        load_labeled_pairs(pairs_file, limit=limit)
    except UserError as exc:
        raise PairsFileError(str(exc)) from None
    bi = api.DEFAULT_BI_SETTINGS if epochs is None else dataclasses.replace(api.DEFAULT_BI_SETTINGS, epochs=epochs)
    cross = api.DEFAULT_CROSS_SETTINGS
    if cross_epochs is not None:
        cross = dataclasses.replace(cross, epochs=cross_epochs)
    result = api.tune(pairs_file, out, target_precision=target_precision, calibration_fraction=calibration_fraction,
                      seed=seed, bi_encoder=bi, cross_encoder=cross, limit=limit, force=force)  # fmt: skip
    manifest = result.manifest
    chosen = manifest["thresholds"]
    measured = manifest["measured"]
    console = _out()
    base = measured["base_default"]
    console.print(
        f"base default on the calibration part: hit rate {base['hit_rate']:.3f}, precision {base['precision']:.3f}, "
        f"strict precision {base['strict_precision']:.3f}"
    )
    if not chosen.get("met"):
        console.print(f"no setting reaches precision {target_precision} on the calibration part; serving is strict")
    else:
        tuned = measured["tuned"]
        low, high = tuned["precision_ci95"]
        console.print(
            f"tuned on the calibration part: hit rate {tuned['hit_rate']:.3f}, precision {tuned['precision']:.3f} "
            f"(95% CI {low:.3f}-{high:.3f}), strict precision {tuned['strict_precision']:.3f}"
        )
        console.print(
            f"chosen: candidate threshold {chosen['candidate_threshold']}, {chosen['verifier']} verifier threshold "
            f"{chosen['verifier_threshold']}, answer guard {'on' if chosen['answer_guard'] else 'off'}"
        )
    console.print(f"wrote {_plain(result.directory / 'manifest.json')} and {_plain(result.directory / 'report.md')}")


def _stopped_at(report: CalibrationReport, chosen: SweepRow | None, guard: bool, min_hits: int) -> SweepRow | None:
    """The judged threshold just below the recommended one: the first whose precision misses the target."""
    if chosen is None:
        return None
    lower = [row for row in report.rows if row.guard == guard and row.threshold < chosen.threshold]
    judged = [row for row in lower if row.labeled_hits >= min_hits]
    return max(judged, key=lambda row: row.threshold, default=None)


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


def parse_warm_record(path: Path, number: int, line: str, integration: str | None = None) -> WarmRecord:
    """Check one line of a warm file; UserError names the line. With `integration` (warm --for), a line is only
    {"prompt": ..., "response": "the answer's text"} and optionally "namespace": the model and expiry come from
    the options."""
    record = _json_object(path, number, line, "nothing was written")
    where = f"{path} line {number}"
    if integration is not None:
        not_for_integration = sorted(set(record) & {"model", "ttl", "metadata"})
        if not_for_integration:
            raise UserError(
                f'{where}: with --for {integration}, a line holds only "prompt", "response" and optionally '
                f'"namespace" (got {", ".join(not_for_integration)}): the model comes from --llm and the expiry '
                "from --ttl; nothing was written"
            )
        if "response" in record and not isinstance(record["response"], str):
            raise UserError(
                f"{where}: with --for {integration}, response must be the answer's text (a string), got "
                f"{_shown(record['response'])}; nothing was written"
            )
    unknown = sorted(set(record) - set(WARM_FIELDS))
    if unknown:
        raise UserError(
            f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(WARM_FIELDS)}); nothing was written"
        )
    for required in ("prompt", "response"):
        if required not in record:
            raise UserError(f"{where}: missing {required!r}; nothing was written")
    try:
        if not isinstance(record["prompt"], str):
            raise InvalidInputError(f"prompt must be a string, got {_shown(record['prompt'])}")
        normalize_prompt(record["prompt"])
        check_json_value(record["response"])
        namespace, model = record.get("namespace"), record.get("model")
        if namespace is not None:
            if not isinstance(namespace, str) or not namespace.strip():
                raise InvalidInputError(f"namespace must be a non-empty string, got {_shown(namespace)}")
            check_text(namespace, "namespace")
        if model is not None:
            if not isinstance(model, str):
                raise InvalidInputError(f"model must be a string, got {_shown(model)}")
            check_text(model, "model")
        ttl = validate_ttl(record.get("ttl"))
        metadata = record.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise InvalidInputError(f"metadata must be an object, got {_shown(metadata)}")
            check_json_value(metadata, "metadata")
    except SemanticCacheError as exc:
        raise UserError(f"{where}: {exc}; nothing was written") from exc
    return WarmRecord(record["prompt"], record["response"], namespace, model, ttl, metadata)


INTEGRATIONS = ("langchain", "llamaindex")
_INTEGRATION_PACKAGES = {"langchain": "langchain-semantic-cache", "llamaindex": "llama-index-llms-semantic-cache"}
Storer = Callable[[WarmRecord], Awaitable[None]]


def _load_llm(spec: str, integration: str) -> Any:
    """The model object `--llm module:attribute` names (a class is instantiated with no arguments)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UserError(
            f'--llm must be "module:attribute" naming your application\'s {integration} model, got {spec!r}'
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
        return target() if isinstance(target, type) else target
    except Exception as exc:
        raise UserError(f"cannot load --llm {spec!r}: {type(exc).__name__}: {exc}") from exc


def _integration_storer(integration: str, llm: Any) -> Callable[[Any], Storer]:
    """How warm stores a record where `integration` looks for it: under the partition (Scope) the integration
    gives a call of `llm` with the prompt as its only (user) message and no other arguments, and as the payload
    the integration stores for a model's answer, so its next such call is a hit that never reaches the model.

    Checked before anything is opened (the integration is installed, `llm` is one of its models); the result
    binds the storer to the warm command's cache once it is built."""
    package = _INTEGRATION_PACKAGES[integration]
    if integration == "langchain":
        try:
            from langchain_core.language_models import BaseChatModel, BaseLLM
            from langchain_core.load import dumps
            from langchain_core.messages import AIMessage, HumanMessage
            from langchain_core.outputs import ChatGeneration, Generation
            from langchain_semantic_cache import SemanticCache as LangChainCache
        except ImportError as exc:
            raise UserError(f"--for langchain needs the LangChain integration: pip install {package} ({exc})") from exc
        if isinstance(llm, BaseChatModel):
            chat = True
            llm_string = llm._get_llm_string()  # what BaseChatModel passes its cache for a call without stop
        elif isinstance(llm, BaseLLM):
            chat = False
            # As BaseLLM.generate builds its cache's llm_string (langchain_core: get_prompts, stop=None).
            params = llm._dict_for_compat() if hasattr(llm, "_dict_for_compat") else llm.dict()
            llm_string = str(sorted({**params, "stop": None}.items()))
        else:
            raise UserError(
                f"--for langchain: --llm must name a LangChain chat model or LLM (BaseChatModel or BaseLLM), "
                f"got {type(llm).__name__}"
            )

        def bind_langchain(cache: Any) -> Storer:
            # The integration's public BaseCache.aupdate, fed what LangChain itself hands its cache for such a
            # call; its namespace is its engine's, so a record of another namespace goes through an engine of
            # that namespace on the same backend and embedder (never closed: closing would close the backend).
            by_namespace: dict[str, Any] = {cache.config.namespace: LangChainCache(cache=cache)}

            def langchain_cache_for(record: WarmRecord) -> Any:
                namespace = record.namespace or cache.config.namespace
                if namespace not in by_namespace:
                    config = dataclasses.replace(cache.config, namespace=namespace)
                    engine = type(cache)(backend=cache.backend, embedder=cache.embedder, config=config)
                    by_namespace[namespace] = LangChainCache(cache=engine)
                return by_namespace[namespace]

            async def store_langchain(record: WarmRecord) -> None:
                if chat:  # a chat model's cache prompt is its serialized messages
                    prompt = dumps([HumanMessage(content=record.prompt)])
                    answer: list[Any] = [ChatGeneration(message=AIMessage(content=record.response))]
                else:
                    prompt, answer = record.prompt, [Generation(text=record.response)]
                await langchain_cache_for(record).aupdate(prompt, llm_string, answer)

            return store_langchain

        return bind_langchain
    try:
        from llama_index.core.llms import LLM
        from llama_index.llms.semantic_cache import SemanticCacheLLM
    except ImportError as exc:
        raise UserError(f"--for llamaindex needs the LlamaIndex integration: pip install {package} ({exc})") from exc
    if not isinstance(llm, LLM):
        raise UserError(f"--for llamaindex: --llm must name a LlamaIndex LLM, got {type(llm).__name__}")

    def bind_llamaindex(cache: Any) -> Storer:
        wrappers: dict[str | None, Any] = {}

        async def store_llamaindex(record: WarmRecord) -> None:
            if record.namespace not in wrappers:  # SemanticCacheLLM(namespace=None) uses the cache's (--namespace)
                wrappers[record.namespace] = SemanticCacheLLM(llm=llm, cache=cache, namespace=record.namespace)
            try:
                await wrappers[record.namespace].astore_completion(record.prompt, record.response)
            except InvalidInputError as exc:
                raise UserError(str(exc)) from exc

        return store_llamaindex

    return bind_llamaindex


@app.command(cls=_PlainHelpCommand)
@_one_line_errors
def warm(
    url: UrlArgument,
    records_file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.jsonl",
            help='One JSON object a line: {"prompt": ..., "response": ...} and optionally "namespace", "model", '
            '"ttl" (seconds) and "metadata" (with --for: "prompt", "response" as the answer\'s text, and "namespace").',
            show_default=False,
        ),
    ],
    embedder_spec: EmbedderOption = "bundled",
    tuned: TunedOption = None,
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", metavar="NAME", help="Namespace of records that name none.")
    ] = ("default"),
    ttl: Annotated[
        float | None, typer.Option("--ttl", metavar="SECONDS", help="Seconds each entry lives (default: forever).")
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, metavar="N", help="Records embedded at once (at least 1).")
    ] = 64,
    integration: Annotated[
        str | None,
        typer.Option(
            "--for",
            metavar="INTEGRATION",
            help='Store the answers where an integration looks for them: "langchain" or "llamaindex" (with --llm).',
            show_default=False,
        ),
    ] = None,
    llm_spec: Annotated[
        str | None,
        typer.Option(
            "--llm",
            metavar="MODULE:ATTRIBUTE",
            help="With --for: the model your application gives the integration (an object, or a class built with no "
            "arguments), importable from the current directory.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Bulk-load prompt/response records, embedded with the cache's embedder (the whole file is checked first).

    Each record lands in the partition of Scope(namespace, model): the one the cache serves calls with that
    namespace and model and no other call parameters or context.

    For an integration, warm --for langchain|llamaindex --llm MODULE:ATTRIBUTE: each line is {"prompt": ...,
    "response": "the answer's text"} and optionally "namespace", stored as the integration stores that model's
    answer to a call with the prompt as its only message and no other arguments (LangChain: invoke(prompt) on
    the chat model or LLM; LlamaIndex: complete(prompt), and on a chat model also chat with the prompt as the one
    user message). Give the --embedder and --namespace the application's cache uses.
    """
    from semantic_llm_cache.cache import SemanticCache

    _check_namespace(namespace)
    if integration is not None and integration not in INTEGRATIONS:
        raise UserError(f"--for must be one of {', '.join(INTEGRATIONS)}, got {integration!r}")
    if (integration is None) != (llm_spec is None):
        raise UserError(
            "--for and --llm go together: --for langchain|llamaindex --llm module:attribute names the integration "
            "and the model your application gives it"
        )
    try:
        default_ttl = validate_ttl(ttl, "--ttl")
    except ConfigurationError:
        raise UserError(
            f"--ttl must be a positive number of seconds up to {MAX_TTL:.0f} (100 years), got {ttl}; "
            "leave it out for entries that never expire"
        ) from None

    async def work() -> tuple[int, int]:
        records = [
            parse_warm_record(records_file, number, line, integration) for number, line in _read_lines(records_file)
        ]
        # A prompt repeated in the same namespace and model is one entry: the last record wins, as in the file.
        latest = {(r.namespace or namespace, r.model, normalize_prompt(r.prompt)): r for r in records}
        if tuned is not None and embedder_spec != "bundled":
            raise UserError("give --tuned (a tuned folder brings its embedder) or --embedder, not both")
        embedder = as_embedder(load_embedder(embedder_spec) if tuned is None else _tuned_embedder(tuned))
        if not getattr(embedder, "stable_name", True):
            raise UserError(
                f"--embedder {embedder_spec} names no model, so what warm stores could never be found by your "
                "application: give it the name your application uses (an Embedder with a `name`, or "
                "CallableEmbedder(fn, name='...') in that module)"
            )
        bind_storer = None
        if integration is not None and llm_spec is not None:  # checked before the backend is opened
            bind_storer = _integration_storer(integration, _load_llm(llm_spec, integration))
        backend = _open_backend(url, must_exist=False)
        try:
            cache = SemanticCache(backend=backend, embedder=embedder, namespace=namespace, ttl=default_ttl,
                                  on_error="raise")  # fmt: skip
        except BaseException:
            await backend.close()
            raise
        stored = 0
        failures: list[Exception] = []
        try:
            store_for = bind_storer(cache) if bind_storer is not None else None
            with _progress() as progress:
                loading = progress.add_task(f"loading embedder {cache.embedder.name}", total=None)
                try:
                    await cache.warmup()
                except SemanticCacheError:
                    raise
                except Exception as exc:  # a user's embedder that fails on its first call
                    raise EmbeddingError(
                        f"the embedder {cache.embedder.name} failed: {type(exc).__name__}: {exc}"
                    ) from exc
                progress.remove_task(loading)
                task = progress.add_task(f"warming {_plain(url)}", total=len(latest))
                gate = asyncio.Semaphore(concurrency)  # concurrent stores let the embedder batch its work

                async def store(record: WarmRecord) -> None:
                    nonlocal stored
                    async with gate:
                        if failures:  # after a failure no new store starts; those under way finish
                            return
                        scope = Scope(namespace=record.namespace, model=record.model)
                        try:
                            if store_for is not None:
                                await store_for(record)
                            else:
                                await cache.store(record.prompt, record.response, scope, record.ttl, record.metadata)
                        except Exception as exc:  # the package's errors, or a bug: either way, stop here
                            failures.append(exc)
                            return
                    stored += 1
                    progress.advance(task)

                await asyncio.gather(*(store(record) for record in latest.values()))
        finally:
            await cache.close()
        if failures:
            raise UserError(
                f"stored {stored} of {_entries(len(latest))}, then failed: {_described(failures[0])}; "
                "running warm again is safe: it replaces the same entries"
            )
        return len(records), stored

    count, stored = _run(work())
    repeated = f" ({count - stored} repeated an earlier prompt: the last one was kept)" if stored < count else ""
    entries = _entries(stored)
    _out().print(f"stored {entries} from {_count(count, 'record')} in {_plain(url)}{repeated}")
    _note_if_ephemeral(url, wrote=True)


# -- export / import -------------------------------------------------------------------------------------


def export_line(key: str, entry: CacheEntry) -> str:
    """One line of an export file: the entry's versioned JSON (vector as base64 float32) and its key."""
    try:
        line = json.dumps({"key": key, **entry_to_dict(entry)}, ensure_ascii=False, allow_nan=False)
        check_text(line, f"entry {key!r}")
    except (ValueError, TypeError, RecursionError) as exc:  # InvalidInputError is a ValueError
        raise UserError(f"entry {key!r} cannot be written as a line of JSON ({exc}); nothing was exported") from exc
    return line


_COUNT_FIELDS = ("hits", "tokens")
_NUMBER_FIELDS = {
    "created_at": "a Unix timestamp (seconds since 1970, >= 0)",
    "expires_at": "a Unix timestamp (seconds since 1970, >= 0) or null",
    "last_hit_at": "a Unix timestamp (seconds since 1970, >= 0) or null",
    "compute_seconds": "a number of seconds >= 0 or null",
    "min_similarity": "a number from 0 to 2",
}


def check_entry_fields(record: dict[str, Any]) -> None:
    """Refuse the numbers of an exported entry that entry_from_dict would convert rather than refuse.

    hits and tokens must be whole numbers from 0 to 2**63-1 (not 2.5, "3", 1e400 or 10**30); timestamps,
    compute_seconds and min_similarity must be finite numbers >= 0 (not strings, booleans or 1e400); the
    upper bounds of those (CacheEntry's) are checked when the entry is built. Text fields must be strings.
    Fields that are absent are left to entry_from_dict (which names a missing required one).
    """
    for name in _COUNT_FIELDS:
        if name not in record or (name == "tokens" and record[name] is None):
            continue
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_COUNT:
            raise InvalidInputError(f"{name} must be a whole number from 0 to 2**63-1, got {_shown(value)}")
    for name, meaning in _NUMBER_FIELDS.items():
        if name not in record or (name not in ("created_at", "min_similarity") and record[name] is None):
            continue
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not value >= 0:
            raise InvalidInputError(f"{name} must be {meaning}, got {_shown(value)}")
    for name in ("prompt", "partition_id", "namespace", "embedder"):
        value = record.get(name, "")
        if not isinstance(value, str) and not (name == "embedder" and value is None):
            raise InvalidInputError(f"{name} must be a string, got {_shown(value)}")
    metadata = record.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidInputError(f"metadata must be an object or null, got {_shown(metadata)}")
    embedding = record.get("embedding")
    if embedding is not None and not isinstance(embedding, str):
        raise InvalidInputError(f"embedding must be base64 text or null, got {_shown(embedding)}")


def parse_export_line(path: Path, number: int, line: str) -> tuple[str, CacheEntry]:
    """Inverse of export_line; UserError names the line."""
    record = _json_object(path, number, line, "nothing was imported")
    where = f"{path} line {number}"
    key = record.pop("key", None)
    if not isinstance(key, str):
        raise UserError(f'{where}: missing the entry\'s "key" (a string); nothing was imported')
    try:
        check_text(key, "key")
        check_entry_fields(record)
        entry = entry_from_dict(record)
        if partition_of_key(key) != entry.partition_id:
            raise InvalidInputError(f"key {key!r} is not in the entry's partition {entry.partition_id!r}")
    except SemanticCacheError as exc:
        raise UserError(f"{where}: {exc}; nothing was imported") from exc
    return key, entry


@app.command(cls=_PlainHelpCommand)
@_one_line_errors
def export(
    url: UrlArgument,
    output: Annotated[
        Path, typer.Argument(metavar="FILE.jsonl", help='Where to write the entries ("-": stdout).', show_default=False)
    ],
    namespace: NamespaceOption = None,
) -> None:
    """Back up the live entries as JSON lines, vectors included (written to a temporary file, then renamed)."""
    _check_namespace(namespace)
    to_stdout = str(output) == "-"
    if not to_stdout and (output.is_dir() or not output.name):
        raise UserError(f"cannot write {output}: it is a directory; name the file to write, e.g. {output}/backup.jsonl")
    entries = _run(_using(url, True, lambda backend: backend.iterate(namespace)))
    lines = [export_line(key, entry) + "\n" for key, entry in entries]
    if to_stdout:
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
        _note_if_ephemeral(url, wrote=False)
        return
    partial = output.with_name(output.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as sink:
            sink.writelines(lines)
        os.replace(partial, output)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the file name
        with contextlib.suppress(OSError, ValueError):
            partial.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"cannot write {output}: {reason}; nothing was exported") from exc
    _status().print(f"exported {_entries(len(lines))} to {_plain(output)}")
    _note_if_ephemeral(url, wrote=False)


@app.command("import", cls=_PlainHelpCommand)
@_one_line_errors
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
                task = progress.add_task(f"importing into {_plain(url)}", total=len(entries))
                for number, key, entry in entries:
                    line_number = number
                    if entry.is_expired(now):
                        expired += 1
                    else:
                        await backend.set(key, entry)
                        imported += 1
                    progress.advance(task)
        except Exception as exc:  # the backend's errors, or a bug: either way, say how far the import got
            raise UserError(
                f"{source} line {line_number}: failed after importing {imported} of {_entries(len(entries))} "
                f"(every line before it is in the cache, none after): {_described(exc)}"
            ) from exc
        finally:
            await backend.close()
        return imported, expired

    imported, expired = _run(work())
    skipped = f"; skipped {expired} already expired" if expired else ""
    _out().print(f"imported {_entries(imported)} into {_plain(url)}{skipped}")
    _note_if_ephemeral(url, wrote=True)
