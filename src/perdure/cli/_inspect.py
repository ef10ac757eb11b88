"""`perdure list` and `stats`: read-only views of a storage, as tables or `--json`.

They create nothing (a missing storage is exit 3) and change nothing, so an operator can run them
against a production storage at any time. `list` asks the storage for one page
(`query_executions_async(ExecutionQuery(...))`: the filtering and the keyset paging are the
storage's, indexed on SQLite, PostgreSQL and Redis) and how many executions match
(`count_executions_async`), then prints the page and the command of the next one. Every value they
print comes from the storage and goes through `_format` (`_cell`, `safe_text`, `_json`); the `list`
table keeps execution ids whole on any terminal width, because they are what `perdure show` takes.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._redact import mask_url
from ..errors import UserError
from ..records import ExecutionRecord, ExecutionStatus, utcnow
from ..storage import DurableExecutionStorage, ExecutionPage, ExecutionQuery
from ._app import JsonOption, StorageOption, _query, _usage, app
from ._engines import (
    AddressOption,
    DbosUrlOption,
    EngineOption,
    NamespaceOption,
    choose_engine,
    engine_list,
)
from ._format import _cell, _json, safe_text
from ._timeline import ago, execution_name, state

__all__ = ["list_executions", "parse_moment", "stats"]

_LIST_COLUMNS = ("execution_id", "status", "name", "attempts", "updated", "step", "lease_owner", "error")

_RELATIVE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_moment(value: str, now: datetime | None = None) -> datetime:
    """`2h`, `7d`, `30m`, `45s`, `2w` ago, or an ISO date or date-time (naive: UTC); `ValueError` else."""
    match = _RELATIVE.fullmatch(value)
    if match is not None:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        return (now or utcnow()) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a time ago such as 2h, 7d, 30m nor an ISO date or date-time "
            f"such as 2026-11-30 or 2026-11-30T12:00:00+01:00"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _row(head: ExecutionRecord) -> dict[str, Any]:
    """An execution's summary fields, raw: the `list --json` items."""
    return {
        "execution_id": head.execution_id,
        "status": head.status.value,
        "state": state(head),
        "name": execution_name(head),
        "step": f"{head.step_index} {head.step_name}".strip(),
        "attempts": head.attempts,
        "created_at": head.created_at.isoformat(timespec="seconds"),
        "updated_at": head.updated_at.isoformat(timespec="seconds"),
        "lease_owner": head.lease_owner or "",
        "error": str(head.error) if head.error else "",
    }


_FIXED_COLUMNS = frozenset({"execution_id", "status", "attempts", "updated"})
_DROP_ORDER = ("lease_owner", "step", "attempts", "name", "updated", "error", "status")
"""Columns left out, in this order, when the terminal is too narrow for all of them."""
_FLEX_MIN = 12


def _list_table(heads: Sequence[ExecutionRecord], width: int) -> Table:
    """Execution ids are never cut (they are what `perdure show` takes); the free-text columns shrink.

    The id, status, attempts and time columns do not wrap, so Rich shrinks only name, step and
    error (ellipsized on one line). When `width` cannot hold the fixed columns plus a few characters
    of each free-text one, the least useful columns are left out (`_DROP_ORDER`); on a terminal
    narrower than an id, the id folds onto several lines rather than losing characters. The status
    is the state (`running`, `interrupted`, `sleeping` for a stored `success`).
    """
    now = utcnow()
    rows = [
        {
            "execution_id": safe_text(head.execution_id),
            "status": state(head, now),
            "name": safe_text(execution_name(head)),
            "step": safe_text(f"{head.step_index} {head.step_name}".strip()),
            "attempts": str(head.attempts),
            "updated": f"{ago(head.updated_at, now)} ago",
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
    roomy = sum(natural(c) for c in columns) + 2 * (len(columns) - 1) <= width
    cap = None if roomy else _FLEX_MIN + 2  # short of room, the error gets what name and step leave
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for column in columns:
        table.add_column(
            column,
            no_wrap=column in _FIXED_COLUMNS,
            justify="right" if column == "attempts" else "left",
            max_width=cap if column in ("name", "step", "lease_owner") else None,
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


def _next_command(
    storage: str | None,
    statuses: list[ExecutionStatus] | None,
    name: str | None,
    since: str | None,
    until: str | None,
    search: str | None,
    limit: int,
    cursor: str,
) -> str:
    """`perdure list ... --cursor TOKEN`: the next page, with the same filters.

    A storage URL with a password is left out (pass it again, or set PERDURE_STORAGE_URL): the line is
    printed on the terminal.
    """
    parts = ["perdure", "list"]
    if storage and mask_url(storage) == storage:
        parts += ["--storage", storage]
    for status in statuses or ():
        parts += ["--status", status.value]
    for option, value in (("--name", name), ("--since", since), ("--until", until), ("--search", search)):
        if value:
            parts += [option, value]
    if limit != 50:
        parts += ["--limit", str(limit)]
    parts += ["--cursor", cursor]
    return " ".join(shlex.quote(part) for part in parts)


@app.command("list")
def list_executions(
    storage: StorageOption = None,
    status: Annotated[
        list[ExecutionStatus] | None,
        typer.Option("--status", show_default=False, help="Only this status (repeatable)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(metavar="NAME", show_default=False, help="Only this agent or workflow name.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="WHEN",
            show_default=False,
            help="Only created at or after WHEN: 2h, 7d, 30m ago, or an ISO date/time (UTC if no offset).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(metavar="WHEN", show_default=False, help="Only created before WHEN (as --since)."),
    ] = None,
    search: Annotated[
        str | None,
        typer.Option(
            metavar="TEXT", show_default=False, help="Only with TEXT in the id, name or error (any case)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many per page.")] = 50,
    cursor: Annotated[
        str | None,
        typer.Option(metavar="TOKEN", show_default=False, help="The page after the one that printed TOKEN."),
    ] = None,
    as_json: JsonOption = False,
    engine: EngineOption = None,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    dbos_url: DbosUrlOption = None,
) -> None:
    """List executions, most recently updated first, a page at a time.

    With `--engine temporal|dbos|prefect` (or `PERDURE_ENGINE`) the list comes from that engine's
    own visibility (`--status` and `--limit` apply; the other filters and pages do not).
    """
    engine_name = choose_engine(engine, address=address, namespace=namespace, dbos_url=dbos_url)
    if engine_name != "embedded":
        engine_list(engine_name, [s.value for s in status or ()], limit, as_json)
        return
    window: dict[str, datetime | None] = {}
    for option, value in (("--since", since), ("--until", until)):
        try:
            window[option] = parse_moment(value) if value else None
        except ValueError as exc:
            _usage(f"{option}: {exc}")
    try:
        query = ExecutionQuery(
            statuses=frozenset(s.value for s in status) if status else None,
            name=name or None,
            since=window["--since"],
            until=window["--until"],
            search=search or None,
            limit=limit,
            cursor=cursor or None,
        )
    except UserError as exc:
        _usage(str(exc).replace("ExecutionQuery.", "--").replace("--statuses", "--status"))

    async def load(store: DurableExecutionStorage) -> tuple[ExecutionPage, int]:
        page = await store.query_executions_async(query)
        total = await store.count_executions_async(query)
        return page, total

    page, total = _query(storage, load)
    if as_json:
        typer.echo(
            _json(
                {"executions": [_row(h) for h in page.items], "total": total, "next_cursor": page.next_cursor}
            )
        )
        return
    console = Console()
    if page.items:
        console.print(_list_table(page.items, console.width))
    matching = "execution" if total == 1 else "executions"
    typer.echo(f"{len(page.items)} of {total} {matching}{' (filtered)' if _filtered(query) else ''}")
    if page.next_cursor:
        # A relative --since/--until is written as the moment it meant, so every page has the same window.
        since_at, until_at = (
            m.isoformat(timespec="seconds") if m else None for m in (query.since, query.until)
        )
        command = _next_command(storage, status, name, since_at, until_at, search, limit, page.next_cursor)
        typer.echo(f"next page: {safe_text(command)}")


def _filtered(query: ExecutionQuery) -> bool:
    return any(v is not None for v in (query.statuses, query.name, query.since, query.until, query.search))


@app.command()
def stats(storage: StorageOption = None, as_json: JsonOption = False) -> None:
    """Count executions by status."""
    data: dict[str, Any] = _query(storage, lambda s: s.get_stats_async())
    if as_json:
        typer.echo(_json(data))
        return
    title = Text(safe_text(f"{data['backend']}: {data['total_executions']} executions"))
    table = Table("status", "executions", title=title)
    for status_name, count in data["by_status"].items():
        table.add_row(_cell(status_name), _cell(count))
    Console().print(table)
