r"""The `perdure` command: a recovery worker and a few operator commands.

    perdure [--debug] worker --storage URL --app module:attr [--app ...] [--concurrency N] [--once] ...
    perdure [--debug] list   --storage URL [--status S] [--limit N] [--json]
    perdure [--debug] stats  --storage URL [--json]
    perdure [--debug] show   --storage URL EXECUTION_ID [--steps N] [--json]

`--storage` also reads `PERDURE_STORAGE`, `--app` also reads `PERDURE_APP`, `--debug` also reads
`PERDURE_DEBUG=1`. The logic lives in `perdure.durable.worker` and `perdure.durable.recovery`; this
module only parses and prints.

Errors are one line on stderr, `error: <message>` (`--debug` adds the traceback), with exit codes
2 for usage errors (bad option, `--app` that is not an agent, invalid storage URL or configuration),
3 for a storage that does not exist (read-only commands create nothing), 1 for every other failure
(storage unreachable, corrupt record, failed executions of `worker --once`).

Everything read from a storage is untrusted text: it is printed as plain text, never as Rich
markup, and control characters (ESC, BEL, CR, C1, bidi overrides, ...) are shown as visible escapes
such as `\x1b`, so a record cannot drive the operator's terminal. `--json` output is exact JSON
(non-ASCII kept readable, control characters escaped).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from datetime import UTC
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic_ai import Agent as PydanticAgent
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .agent import Agent as PerdureAgent
from .durable import PerdureDurability
from .durable.identity import CHANGE_KINDS as _KINDS
from .durable.leases import default_worker_id
from .durable.recovery import AgentResolver, RecoveryOptions, RecoveryReport
from .durable.worker import Worker
from .errors import PerdureError, StorageNotFoundError, UserError
from .records import ExecutionRecord, ExecutionStatus
from .storage import DurableExecutionStorage, storage_from_url

__all__ = ["app", "build_resolver", "load_app", "main", "safe_text", "summarize_report"]

logger = logging.getLogger("perdure.cli")

T = TypeVar("T")

app = typer.Typer(
    help="perdure: durable AI-agent runs. Recover interrupted executions and inspect a storage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_STORAGE_NOT_FOUND = 3

CHANGE_KINDS = tuple(k for k in ("tools", "output", "instructions", "prompt") if k in _KINDS)
"""What `--allow-changes` may name (the identity differences a resume may accept)."""

ACCEPTED_APPS = (
    "a perdure Agent, a pydantic-ai Agent with PerdureDurability, a dict {agent_name: agent}, "
    "a list/tuple of agents, or a callable (head) -> agent"
)


class _Settings:
    debug = False


_settings = _Settings()

StorageOption = Annotated[
    str,
    typer.Option(
        "--storage",
        "-s",
        envvar="PERDURE_STORAGE",
        help="Storage URL: sqlite:///path.db, file://DIR, redis://..., postgresql://...",
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
    _settings.debug = debug


# ---- untrusted text -------------------------------------------------------------------------------

# C0 (tab and newline included: a record must not forge lines), DEL, C1 (8-bit CSI/OSC/...), lone
# surrogates (unencodable), line/paragraph separators and bidirectional overrides ("Trojan source").
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
# What json.dumps(ensure_ascii=False) leaves raw: it escapes C0 itself.
_UNSAFE_JSON = re.compile(r"[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def safe_text(value: object) -> str:
    r"""`value` as text with every control character replaced by a visible escape (`\x1b`, `\n`).

    For text that comes from a storage (ids, names, errors, descriptions): it may hold terminal
    escape sequences. The result is still raw text, not Rich markup: print it with `typer.echo` or
    wrap it in `rich.text.Text` (`_cell`), never pass it to Rich as markup.
    """
    return _UNSAFE.sub(_visible, value if isinstance(value, str) else str(value))


def _cell(value: object, *, fold: bool = False) -> Text:
    """A table cell Rich never parses as markup: one line, ellipsized, or (`fold`) wrapped, never cut."""
    if fold:
        return Text(safe_text(value), no_wrap=False, overflow="fold")
    return Text(safe_text(value), no_wrap=True, overflow="ellipsis")


def _json(data: Any) -> str:
    """Exact JSON, non-ASCII kept readable, every control character escaped."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    return _UNSAFE_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class _SafeFormatter(logging.Formatter):
    """A log formatter that escapes control characters in messages and tracebacks (worker logs)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        """Format, then escape: the message may carry execution ids or errors from a storage."""
        return safe_text(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        """Escape each traceback line, keeping the line breaks."""
        return "\n".join(safe_text(line) for line in super().formatException(ei).split("\n"))

    def formatStack(self, stack_info: str) -> str:
        """Escape each stack line, keeping the line breaks."""
        return "\n".join(safe_text(line) for line in super().formatStack(stack_info).split("\n"))


# ---- errors ---------------------------------------------------------------------------------------


def _usage(message: str) -> NoReturn:
    """A usage error: one line on stderr, exit 2."""
    typer.echo(f"error: {safe_text(message)}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _fail(exc: BaseException, code: int) -> NoReturn:
    """Report `exc` as one line (plus the traceback with `--debug`) and exit with `code`."""
    if _settings.debug:
        lines = "".join(traceback.format_exception(exc)).rstrip("\n").split("\n")
        typer.echo("\n".join(safe_text(line) for line in lines), err=True)
    message = str(exc) if isinstance(exc, PerdureError) else f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, PerdureError) and not _settings.debug:
        message += " (run with --debug for the traceback)"
    typer.echo(f"error: {safe_text(message)}", err=True)
    raise typer.Exit(code) from exc


def _exit_code(exc: Exception) -> int:
    if isinstance(exc, StorageNotFoundError):
        return EXIT_STORAGE_NOT_FOUND
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
    """Run `work()` in a new event loop, turning any error into one line and an exit code."""
    try:
        with _quiet(quiet):
            return asyncio.run(work())
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except Exception as exc:
        _fail(exc, _exit_code(exc))


def _open(url: str) -> DurableExecutionStorage:
    return storage_from_url(url)  # UserError (malformed URL, unknown scheme) -> exit 2


def _query(url: str, work: Callable[[DurableExecutionStorage], Awaitable[T]]) -> T:
    """Open the storage, await `work(storage)`, close the storage; errors end the command."""

    async def run() -> T:
        storage = _open(url)
        try:
            return await work(storage)
        finally:
            await storage.close_async()

    return _run(run)


# ---- --app ----------------------------------------------------------------------------------------


def load_app(reference: str) -> Any:
    """Import `module:attr` (attr may be dotted) the way uvicorn does: the current dir is importable.

    A reference that cannot be imported is a usage error (exit 2).
    """
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        _usage(f"--app: expected module:attribute, got {reference!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except Exception as exc:  # ImportError, AttributeError, or the module failing at import time
        if _settings.debug:
            traceback.print_exc()
        _usage(f"--app: cannot import {reference!r}: {type(exc).__name__}: {exc}")
    return target


def _is_agent(obj: Any, reference: str) -> bool:
    """Whether `obj` is an agent the worker can resume with; a non-durable pydantic-ai agent is refused."""
    if isinstance(obj, PydanticAgent):
        if PerdureDurability.from_agent(obj) is None:
            _usage(
                f"--app {reference}: pydantic-ai Agent {obj.name!r} is not durable; create it with "
                f"capabilities=[PerdureDurability()] (from perdure.durable), or use perdure.Agent"
            )
        return True
    if isinstance(obj, PerdureAgent):
        return True
    # Duck-typed like the recovery code: anything with the facade's resume method.
    return not isinstance(obj, type) and callable(getattr(obj, "continue_durable_async", None))


def _describe(obj: Any) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__qualname__} (pass an instance)"
    text = repr(obj)
    return f"{type(obj).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def build_resolver(references: Sequence[str]) -> AgentResolver:
    """The agent resolver the `--app` references name, validated before the storage is opened.

    One reference to an agent or a callable is passed through unchanged. Otherwise every agent
    (from dicts, lists/tuples and single agents, over all references) is collected into one
    `{agent_name: agent}` mapping; agents need a name there, and two different agents with one name
    are refused. Anything else is a usage error (exit 2) saying what is accepted.
    """
    if not references:
        _usage(f"--app is required: {ACCEPTED_APPS}")
    targets = [(ref, load_app(ref)) for ref in references]
    if len(targets) == 1:
        ref, obj = targets[0]
        if _is_agent(obj, ref):
            return obj
        if callable(obj) and not isinstance(obj, type | Mapping):
            return obj
    agents: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def add(name: Any, agent: Any, where: str) -> None:
        if not _is_agent(agent, where):
            _usage(f"--app {where}: expected an agent, got {_describe(agent)}; accepted: {ACCEPTED_APPS}")
        if not isinstance(name, str) or not name:
            _usage(
                f"--app {where}: agent {agent!r} has no name; with several agents each needs one "
                f"(Agent(..., name='...')) to match the agent_name its executions recorded"
            )
        if name in agents and agents[name] is not agent:
            _usage(f"--app: two different agents are named {name!r} ({origin[name]} and {where})")
        agents[name] = agent
        origin[name] = where

    for ref, obj in targets:
        if isinstance(obj, Mapping):
            for key, agent in obj.items():
                add(key, agent, f"{ref}[{key!r}]")
        elif isinstance(obj, list | tuple):
            for index, agent in enumerate(obj):
                add(getattr(agent, "name", None), agent, f"{ref}[{index}]")
        elif _is_agent(obj, ref):
            add(getattr(obj, "name", None), obj, ref)
        elif callable(obj) and not isinstance(obj, type):
            _usage(f"--app {ref}: a callable resolver must be the only --app (it chooses every agent)")
        else:
            _usage(f"--app {ref}: got {_describe(obj)}; accepted: {ACCEPTED_APPS}")
    if not agents:
        _usage(f"--app {', '.join(references)}: names no agent; accepted: {ACCEPTED_APPS}")
    return agents


def _allow_changes(values: Sequence[str] | None) -> frozenset[str]:
    kinds = {part.strip().lower() for value in values or () for part in value.split(",") if part.strip()}
    unknown = sorted(kinds - set(CHANGE_KINDS))
    if unknown:
        _usage(
            f"--allow-changes: unknown value(s) {', '.join(map(repr, unknown))}; use any of "
            f"{', '.join(CHANGE_KINDS)} (comma-separated or repeated)"
        )
    return frozenset(kinds)


def summarize_report(report: RecoveryReport) -> str:
    """One line for the end of `worker --once`: the counts, and which agents it did not serve."""
    line = str(report)
    names = sorted({name or "(unnamed)" for name in report.not_served.values()})
    if names:
        line += f" (agents: {', '.join(names)})"
    return safe_text(line)


# ---- worker ---------------------------------------------------------------------------------------


async def _probe(store: DurableExecutionStorage, *, once: bool, poll_interval: float) -> None:
    """Check that the storage answers a listing before the worker starts.

    With `once` a failure ends the command (the pass could not list anything). A long-running worker
    survives a transient outage: it logs the problem and keeps polling; only a configuration error
    (retrying cannot help) stops it.
    """
    try:
        with _quiet(once):
            await store.list_executions_async(limit=1)
    except UserError:
        raise
    except Exception as exc:
        if once:
            raise
        if isinstance(exc, StorageNotFoundError):
            logger.warning("%s The worker keeps polling until it exists.", exc)
        else:
            logger.error(
                "storage unreachable at start-up: %s: %s. The worker keeps running and retries every %.1fs.",
                type(exc).__name__,
                exc,
                poll_interval,
            )


@app.command()
def worker(
    storage: StorageOption,
    app_refs: Annotated[
        list[str],
        typer.Option(
            "--app",
            envvar="PERDURE_APP",
            metavar="MODULE:ATTR",
            help="module:attr of a perdure Agent, a pydantic-ai Agent with PerdureDurability, a dict "
            "{agent_name: agent}, a list/tuple of agents or a callable (head) -> agent. Repeat it to "
            "serve several agents (matched by name).",
        ),
    ],
    concurrency: Annotated[int, typer.Option(min=1, help="Executions resumed at the same time.")] = 1,
    poll_interval: Annotated[float, typer.Option(min=0.01, help="Seconds between polls.")] = 5.0,
    lease_ttl: Annotated[float, typer.Option(min=0.1, help="Lease seconds (renewed by heartbeat).")] = 30.0,
    max_attempts: Annotated[int, typer.Option(min=1, help="Attempts before giving up (mark failed).")] = 5,
    delay: Annotated[float, typer.Option(min=0, help="Back-off base seconds between resumes.")] = 0.0,
    timeout: Annotated[float | None, typer.Option(help="Cancel a resume running longer (s).")] = None,
    min_idle: Annotated[
        float | None, typer.Option(help="Idle seconds required (default: lease TTL for unstarted runs).")
    ] = None,
    grace_period: Annotated[float, typer.Option(min=0, help="Seconds to finish on SIGTERM.")] = 10.0,
    worker_id: Annotated[str | None, typer.Option(help="Lease owner prefix (default host:pid:rand).")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Also resume executions with status failed.")] = False,
    allow_changes: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-changes",
            metavar="KINDS",
            help=f"Identity differences a resume accepts on purpose: {', '.join(CHANGE_KINDS)} "
            "(comma-separated or repeated).",
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option(help="One recovery pass, then exit (1 if any failed or the storage is down).")
    ] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
) -> None:
    """Recover interrupted executions: once at start-up, then every poll interval, until SIGTERM."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        _usage(f"--log-level: unknown level {log_level!r}; use DEBUG, INFO, WARNING or ERROR")
    changes = _allow_changes(allow_changes)
    resolver = build_resolver(app_refs)  # before connecting: a wrong --app never touches the storage
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    statuses = [ExecutionStatus.SUCCESS, *([ExecutionStatus.FAILED] if retry_failed else [])]

    async def run() -> int:
        store = _open(storage)
        try:
            options = RecoveryOptions(
                max_attempts=max_attempts,
                delay=delay,
                timeout=timeout,
                lease_ttl=lease_ttl,
                worker_id=worker_id or default_worker_id(),
                min_idle=min_idle,
                statuses=tuple(statuses),
                allow_changes=frozenset(changes),
            )
            runner = Worker(
                store,
                resolver,
                concurrency=concurrency,
                poll_interval=poll_interval,
                grace_period=grace_period,
                options=options,
            )
            await _probe(store, once=once, poll_interval=poll_interval)
            report = await runner.run_async(once=once, handle_signals=True)
        finally:
            await store.close_async()
        if once:
            typer.echo(summarize_report(report), err=True)
        return EXIT_FAILURE if once and report.failed else 0

    raise typer.Exit(_run(run, quiet=False))


# ---- list / stats / show --------------------------------------------------------------------------

_LIST_COLUMNS = ("execution_id", "status", "step", "attempts", "updated_at", "lease_owner", "error")


def _row(head: ExecutionRecord) -> dict[str, Any]:
    return {
        "execution_id": head.execution_id,
        "status": head.status.value,
        "step": f"{head.step_index} {head.step_name}".strip(),
        "attempts": head.attempts,
        "updated_at": head.updated_at.isoformat(timespec="seconds"),
        "lease_owner": head.lease_owner or "",
        "error": str(head.error) if head.error else "",
    }


_FIXED_COLUMNS = frozenset({"execution_id", "status", "attempts", "updated_at"})
_DROP_ORDER = ("lease_owner", "attempts", "step", "updated_at", "error", "status")
"""Columns left out, in this order, when the terminal is too narrow for all of them."""
_FLEX_MIN = 12


def _list_table(heads: Sequence[ExecutionRecord], width: int) -> Table:
    """Execution ids are never cut (they are what `perdure show` takes); the free-text columns shrink.

    The id, status, attempts and time columns do not wrap, so Rich shrinks only step, lease owner and
    error (ellipsized on one line). When `width` cannot hold the fixed columns plus a few characters
    of each free-text one, the least useful columns are left out (`_DROP_ORDER`); on a terminal
    narrower than an id, the id folds onto several lines rather than losing characters.
    """
    rows = [
        {
            "execution_id": safe_text(head.execution_id),
            "status": head.status.value,
            "step": safe_text(f"{head.step_index} {head.step_name}".strip()),
            "attempts": str(head.attempts),
            "updated_at": f"{head.updated_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z",
            "lease_owner": safe_text(head.lease_owner or ""),
            "error": safe_text(str(head.error) if head.error else ""),
        }
        for head in heads
    ]

    def natural(column: str) -> int:
        return max([cell_len(column), *(cell_len(row[column]) for row in rows)])

    def needed(columns: list[str]) -> int:  # padding 1 + divider 1 between columns, none at the edges
        sizes = [natural(c) if c in _FIXED_COLUMNS else min(natural(c), _FLEX_MIN) for c in columns]
        return sum(sizes) + 2 * (len(columns) - 1)

    columns = list(_LIST_COLUMNS)
    for column in _DROP_ORDER:
        if needed(columns) <= width:
            break
        columns.remove(column)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for column in columns:
        table.add_column(
            column, no_wrap=column in _FIXED_COLUMNS, justify="right" if column == "attempts" else "left"
        )
    for row in rows:
        table.add_row(
            *(
                Text(
                    row[c],
                    no_wrap=c != "execution_id",
                    overflow="fold" if c == "execution_id" else "ellipsis",
                )
                for c in columns
            )
        )
    return table


@app.command("list")
def list_executions(
    storage: StorageOption,
    status: Annotated[ExecutionStatus | None, typer.Option(help="Only this status.")] = None,
    limit: Annotated[int | None, typer.Option(min=0, help="At most this many (newest first).")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List executions, most recently updated first."""
    heads = _query(storage, lambda s: s.list_executions_async(status, limit))
    if as_json:
        typer.echo(_json([_row(h) for h in heads]))
        return
    console = Console()
    console.print(_list_table(heads, console.width))


@app.command()
def stats(storage: StorageOption, as_json: JsonOption = False) -> None:
    """Count executions by status."""
    data: dict[str, Any] = _query(storage, lambda s: s.get_stats_async())
    if as_json:
        typer.echo(_json(data))
        return
    title = Text(safe_text(f"{data['backend']}: {data['total_executions']} executions"))
    table = Table("status", "executions", title=title)
    for name, count in data["by_status"].items():
        table.add_row(_cell(name), _cell(count))
    Console().print(table)


def _pending(head: ExecutionRecord) -> str:
    if head.pending is None:
        return ""
    calls = ", ".join(f"{c.tool_name} ({c.tool_call_id})" for c in head.pending.calls)
    return f"{head.pending.kind}: {calls}" if calls else head.pending.kind


@app.command()
def show(
    storage: StorageOption,
    execution_id: Annotated[str, typer.Argument(help="The execution to show.")],
    steps: Annotated[int, typer.Option(min=0, help="Show the last N journal entries.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Show an execution's head and a summary of its journal."""

    async def load(store: DurableExecutionStorage) -> tuple[ExecutionRecord | None, list[Any], str]:
        head = await store.load_state_async(execution_id)
        journal = await store.load_steps_async(execution_id) if head is not None else []
        return head, journal, str(store.not_found_error(execution_id)) if head is None else ""

    head, journal, missing = _query(storage, load)
    if head is None:
        typer.echo(f"error: {safe_text(missing)}", err=True)
        raise typer.Exit(EXIT_FAILURE)
    entries = [
        {
            "seq": s.seq,
            "kind": s.kind.value,
            "name": s.name,
            "key": s.key,
            "attempt": s.attempt,
            "finished_at": s.finished_at.isoformat(timespec="milliseconds"),
        }
        for s in journal[len(journal) - steps :]
        if steps
    ]
    if as_json:
        typer.echo(_json({"head": head.info(), "journal_size": len(journal), "journal": entries}))
        return
    console = Console()
    info = Table(show_header=False, title=Text(safe_text(f"execution {head.execution_id}")))
    info.add_column(no_wrap=True)
    info.add_column(overflow="fold")
    fields: dict[str, Any] = {
        **_row(head),
        "agent": head.task.agent_name or "",
        "tools": ", ".join(t.name for t in head.task.tools),
        "pending": _pending(head),
        "usage": head.usage.model_dump_json(),
        "task": head.task.description[:200],
    }
    for key, value in fields.items():
        info.add_row(_cell(key), _cell(value, fold=True))
    console.print(info)
    if entries:
        journal_table = Table(*entries[0].keys(), title=Text(f"journal: {len(journal)} entries"))
        for entry in entries:
            journal_table.add_row(*(_cell(v, fold=True) for v in entry.values()))
        console.print(journal_table)


def main() -> None:
    """Entry point of the `perdure` console script."""
    app()


if __name__ == "__main__":
    main()
