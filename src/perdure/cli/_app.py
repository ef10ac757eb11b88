"""The typer `app`, its global options, and how any failure becomes one line and an exit code.

Every command registers on `app` and runs its storage work through `_run` or `_query`, so the error
contract of `perdure.cli` (one `error:` line on stderr, the traceback only with `--debug`, exit 2 for
usage errors, 3 for a missing storage, 1 otherwise) is enforced in this one place rather than in each
command. The other modules of the package import from here; this module imports none of them except
`_format`, which keeps the package free of import cycles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from ..errors import (
    CheckpointNotFoundError,
    ExecutionCancelledError,
    ExecutionCompletedError,
    ExecutionConflictError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    PerdureError,
    StorageNotFoundError,
    UserError,
)
from ..settings import apply_log_level, settings
from ..storage import DurableExecutionStorage, storage_from_url
from ._format import safe_text

__all__ = [
    "EXIT_CONFLICT",
    "EXIT_FAILURE",
    "EXIT_STORAGE_NOT_FOUND",
    "EXIT_USAGE",
    "JsonOption",
    "StorageOption",
    "_fail",
    "_open",
    "_query",
    "_quiet",
    "_replaceable",
    "_run",
    "_settings",
    "_storage_url",
    "_usage",
    "app",
    "main",
]

T = TypeVar("T")

app = typer.Typer(
    help="perdure: durable AI-agent runs. Run the recovery worker; inspect, watch and act on executions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_STORAGE_NOT_FOUND = 3
EXIT_CONFLICT = 4
_CONFLICTS = (ExecutionLeasedError, ExecutionCompletedError, ExecutionCancelledError, ExecutionConflictError)
"""Errors that mean the execution's state refuses the action (exit 4): a script may wait and retry."""


class _Settings:
    """The global options of this invocation, set by the app callback before any command runs."""

    debug = False


_settings = _Settings()

StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        "-s",
        envvar="PERDURE_STORAGE",
        show_default=False,
        help="Storage URL: sqlite:///path.db, file://DIR, redis://..., postgresql://... "
        "[default: PERDURE_STORAGE_URL]",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.callback()
def _main_options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", envvar="PERDURE_DEBUG", help="Show tracebacks and library warnings on errors."
        ),
    ] = False,
) -> None:
    """Keep the global options for the command that runs next.

    `--debug` is read later, by `_fail`, `_quiet` and `load_app`, so it is stored rather than passed
    to every command. (The app's `help` text, not this docstring, is what `perdure --help` shows.)
    """
    _settings.debug = debug
    try:
        configured = settings(reload=True)  # each invocation reads the environment and files anew
    except UserError as exc:
        _usage(exc.message)
    apply_log_level(configured)


def _storage_url(value: str | None) -> str:
    """The storage URL of a command: `--storage` (or `PERDURE_STORAGE`), else `PERDURE_STORAGE_URL`.

    Neither is a usage error (exit 2).
    """
    if value:
        return value
    url = settings().storage_url
    if url is None:
        _usage(
            "no storage: pass --storage URL, or set PERDURE_STORAGE_URL (environment, perdure.toml or "
            "[tool.perdure] in pyproject.toml)"
        )
    return url


def _usage(message: str) -> NoReturn:
    """A usage error: one line on stderr, exit 2."""
    typer.echo(f"error: {safe_text(message)}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _fail(exc: BaseException, code: int) -> NoReturn:
    """Report `exc` as one line (plus the traceback with `--debug`) and exit with `code`.

    A `PerdureError` message is written for operators and shown as is; any other exception is
    unexpected, so its type is shown and the operator is pointed at `--debug`.
    """
    if _settings.debug:
        lines = "".join(traceback.format_exception(exc)).rstrip("\n").split("\n")
        typer.echo("\n".join(safe_text(line) for line in lines), err=True)
    message = str(exc) if isinstance(exc, PerdureError) else f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, PerdureError) and not _settings.debug:
        message += " (run with --debug for the traceback)"
    typer.echo(f"error: {safe_text(message)}", err=True)
    raise typer.Exit(code) from exc


def _exit_code(exc: Exception) -> int:
    """The exit code for a failed command: scripts tell a typo in the URL from a storage outage."""
    # no such storage, execution or checkpoint (`fork --at-step` past the end)
    if isinstance(exc, StorageNotFoundError | ExecutionNotFoundError | CheckpointNotFoundError):
        return EXIT_STORAGE_NOT_FOUND
    if isinstance(exc, _CONFLICTS):  # leased elsewhere, completed, cancelled, not paused, ...
        return EXIT_CONFLICT
    if isinstance(exc, UserError):  # invalid URL, storage configuration, id, option value
        return EXIT_USAGE
    return EXIT_FAILURE


@contextlib.contextmanager
def _quiet(enabled: bool = True) -> Iterator[None]:
    """Mute library warnings (e.g. a connection pool's retries) so an error stays one line."""
    if not enabled or _settings.debug:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _run(work: Callable[[], Coroutine[Any, Any, T]], *, quiet: bool = True) -> T:
    """Run `work()` in a new event loop, turning any error into one line and an exit code.

    Args:
        work: Makes the coroutine to run; called inside `_quiet`, so its set-up is muted too.
        quiet: Mute library warnings while it runs (the worker keeps them: they are its log).

    Returns:
        What the coroutine returns.

    Raises:
        typer.Exit: On any error, after printing it (typer's own exits pass through unchanged).

    """
    try:
        with _quiet(quiet):
            return asyncio.run(work())
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except Exception as exc:
        _fail(exc, _exit_code(exc))


def _replaceable(name: str, default: T) -> T:
    """`perdure.cli.<name>` as it is now, or `default` before the package has finished importing.

    `perdure.cli` re-exports the collaborators the commands construct (`storage_from_url`,
    `Worker`), and tests replace them there (`monkeypatch.setattr(perdure.cli, "Worker", Fake)`), as
    they could when the CLI was a single module. Looking the name up on the package at call time
    keeps such a replacement effective without any module here importing the package (no cycle).

    Args:
        name: The attribute of `perdure.cli`.
        default: The real object, used when the package has no such attribute.

    Returns:
        The object to use.

    """
    package = sys.modules.get(__name__.rpartition(".")[0])
    value: T = getattr(package, name, default)
    return value


def _open(url: str | None) -> DurableExecutionStorage:
    """The storage `url` names (see `_storage_url`); a malformed URL or unknown scheme is exit 2."""
    return _replaceable("storage_from_url", storage_from_url)(_storage_url(url))


def _query(url: str | None, work: Callable[[DurableExecutionStorage], Awaitable[T]]) -> T:
    """Open the storage, await `work(storage)`, close the storage; errors end the command.

    Args:
        url: The `--storage` URL (None: `PERDURE_STORAGE_URL`).
        work: The read to do; the storage is closed after it, whatever happens.

    Returns:
        What `work` returns.

    """

    async def run() -> T:
        storage = _open(url)
        try:
            return await work(storage)
        finally:
            await storage.close_async()

    return _run(run)


def main() -> None:
    """Entry point of the `perdure` console script (`perdure.cli:main`) and of `python -m perdure.cli`.

    The commands are registered on `app` when `perdure.cli` is imported, which the entry point does
    before calling this.
    """
    app()
