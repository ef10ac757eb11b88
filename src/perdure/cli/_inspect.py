"""`perdure list`, `stats` and `show`: read-only views of a storage, as tables or `--json`.

They create nothing (a missing storage is exit 3) and change nothing, so an operator can run them
against a production storage at any time. Every value they print comes from the storage and goes
through `_format` (`_cell`, `safe_text`, `_json`); the `list` table keeps execution ids whole on any
terminal width, because they are what `perdure show` takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Annotated, Any

import typer
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..records import ExecutionRecord, ExecutionStatus
from ..storage import DurableExecutionStorage
from ._app import EXIT_FAILURE, JsonOption, StorageOption, _query, app
from ._format import _cell, _json, safe_text

__all__ = ["list_executions", "show", "stats"]

_LIST_COLUMNS = ("execution_id", "status", "step", "attempts", "updated_at", "lease_owner", "error")


def _row(head: ExecutionRecord) -> dict[str, Any]:
    """An execution's summary fields, raw: the `list --json` items and the first rows of `show`."""
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
    storage: StorageOption = None,
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
def stats(storage: StorageOption = None, as_json: JsonOption = False) -> None:
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
    """What a paused execution waits for (the decision kind and its tool calls), for `show`."""
    if head.pending is None:
        return ""
    calls = ", ".join(f"{c.tool_name} ({c.tool_call_id})" for c in head.pending.calls)
    return f"{head.pending.kind}: {calls}" if calls else head.pending.kind


@app.command()
def show(
    execution_id: Annotated[str, typer.Argument(help="The execution to show.")],
    storage: StorageOption = None,
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
