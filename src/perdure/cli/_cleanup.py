"""`perdure cleanup`: delete old executions in batches, with a progress bar and a one-line summary.

The command counts the executions last updated before the cutoff whose status is not kept
(`count_old_executions_async`, an index count: no head is loaded), then deletes them oldest first in
batches of `--batch-size`: each batch is one `cleanup_old_executions_async(limit=batch_size)` call
with the same cutoff, until a call deletes less than a batch. So the storage's own cleanup does the
deleting, with its guarantees: an execution with an unexpired lease (running) or a status of
`--keep-status` (default `PERDURE_RETENTION_KEEP`) is never deleted, old tombstones are purged, and
the built-in backends write each batch as short transactions, so running executions keep writing
their steps meanwhile. The count less the deleted ones is reported as running (kept): executions
leased, or updated since the count. The progress bar goes to stderr; stdout gets the summary line
(or `--json`).
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import UserError
from ..records import utcnow
from ..storage import DurableExecutionStorage
from ..storage.base import cleanup_executions, retention_days, retention_keep
from ._app import JsonOption, StorageOption, _query, _usage, app
from ._format import _json, safe_text

__all__ = ["cleanup", "parse_age"]

_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([dhm]?)\s*", re.IGNORECASE)
_UNIT_DAYS = {"": 1.0, "d": 1.0, "h": 1 / 24, "m": 1 / 1440}


def parse_age(value: str) -> float:
    """Days in `7d`, `12h`, `30m` or a plain number of days; `ValueError` for anything else."""
    match = _AGE.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not an age such as 7d, 12h, 30m or a number of days")
    return float(match.group(1)) * _UNIT_DAYS[match.group(2).lower()]


async def _clean(
    store: DurableExecutionStorage,
    days: float,
    keep: frozenset[str],
    batch_size: int,
    progress: Progress | None,
) -> dict[str, Any]:
    """Count the old executions, delete them in batches (see the module doc), count what happened."""
    started = time.monotonic()
    cutoff = utcnow() - timedelta(days=days)
    old = await store.count_old_executions_async(days, keep_statuses=keep)
    task = progress.add_task("deleting", total=old) if progress is not None else None
    deleted = 0
    while True:
        # The same cutoff for every batch: executions that grow old meanwhile wait for the next run.
        span = max((utcnow() - cutoff) / timedelta(days=1), days)
        done = await cleanup_executions(store, span, keep_statuses=keep, limit=batch_size)
        deleted += done
        if progress is not None and task is not None:
            progress.update(task, advance=done)
        if done < batch_size:
            break
    return {
        "backend": store.backend_name,
        "older_than_days": days,
        "cutoff": cutoff.isoformat(timespec="seconds"),
        "keep_statuses": sorted(keep),
        "old": max(old, deleted),
        "deleted": deleted,
        "running_skipped": max(old - deleted, 0),
        "seconds": round(time.monotonic() - started, 3),
    }


def _age(days: float) -> str:
    """`7d`, `12h`, `30m` (or seconds) for a number of days, the way `--older-than` takes it."""
    for unit, size in (("d", 1.0), ("h", 1 / 24), ("m", 1 / 1440)):
        if round(days / size, 6).is_integer():
            return f"{round(days / size):d}{unit}"
    return f"{days * 86400:.0f}s"


def _summary(result: dict[str, Any]) -> str:
    """One line (under 80 columns): what was deleted, what was kept, where, how long it took."""
    age = _age(result["older_than_days"])
    line = f"deleted {result['deleted']} of {result['old']} execution(s) older than {age}"
    if result["running_skipped"]:
        line += f"; {result['running_skipped']} running kept"
    return safe_text(f"{line} ({result['backend']}, {result['seconds']:.1f}s)")


@app.command()
def cleanup(
    storage: StorageOption = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            metavar="AGE",
            show_default=False,
            help="Delete executions last updated longer ago than AGE: 7d, 12h, 30m or a number of days "
            "(default: PERDURE_RETENTION_DAYS, else 7d).",
        ),
    ] = None,
    keep_status: Annotated[
        list[str] | None,
        typer.Option(
            "--keep-status",
            metavar="STATUS",
            show_default=False,
            help="Never delete executions with this status (repeatable or comma-separated, e.g. failed) "
            "[default: PERDURE_RETENTION_KEEP, else none].",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Executions deleted per batch.")] = 500,
    as_json: JsonOption = False,
) -> None:
    """Delete old finished executions in batches; running (leased) ones are never touched."""
    try:
        days = retention_days(None if older_than is None else parse_age(older_than))
    except ValueError as exc:
        _usage(f"--older-than: {exc}")
    try:
        keep = retention_keep(None if keep_status is None else ",".join(keep_status))
    except UserError as exc:
        _usage(f"--keep-status: {str(exc).removeprefix('keep_statuses: ')}")

    async def work(store: DurableExecutionStorage) -> dict[str, Any]:
        if as_json:
            return await _clean(store, days, keep, batch_size, None)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            return await _clean(store, days, keep, batch_size, progress)

    result = _query(storage, work)
    typer.echo(_json(result) if as_json else _summary(result))
