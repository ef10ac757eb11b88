"""`perdure cleanup`: delete old executions in batches, with a progress bar and a one-line summary.

The command lists the executions last updated before the cutoff, oldest first, and deletes them in
batches of `--batch-size`: each batch is one `cleanup_old_executions_async` call whose cutoff is the
`updated_at` just past the batch's newest execution (the last batch uses the cutoff itself). So the
storage's own cleanup does the deleting, with its guarantees: an execution with an unexpired lease
(running) is never deleted, an execution updated since the listing is left alone, old tombstones are
purged. The progress bar goes to stderr; stdout gets the summary line (or `--json`).
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..records import ExecutionRecord, utcnow
from ..storage import DurableExecutionStorage
from ..storage.base import retention_days
from ._app import JsonOption, StorageOption, _query, _usage, app
from ._format import _json, safe_text

__all__ = ["cleanup", "parse_age"]

_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([dhm]?)\s*", re.IGNORECASE)
_UNIT_DAYS = {"": 1.0, "d": 1.0, "h": 1 / 24, "m": 1 / 1440}
_ONE_MICROSECOND = timedelta(microseconds=1)


def parse_age(value: str) -> float:
    """Days in `7d`, `12h`, `30m` or a plain number of days; `ValueError` for anything else."""
    match = _AGE.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not an age such as 7d, 12h, 30m or a number of days")
    return float(match.group(1)) * _UNIT_DAYS[match.group(2).lower()]


def _running(head: ExecutionRecord, now: Any) -> bool:
    return head.lease_owner is not None and head.lease_expires_at is not None and head.lease_expires_at > now


async def _clean(
    store: DurableExecutionStorage, days: float, batch_size: int, progress: Progress | None
) -> dict[str, Any]:
    """List the old executions, delete them in batches (see the module doc), count what happened."""
    started = time.monotonic()
    now = utcnow()
    cutoff = now - timedelta(days=days)
    old = sorted(
        (h for h in await store.list_executions_async() if h.updated_at < cutoff),
        key=lambda h: (h.updated_at, h.execution_id),
    )
    running = sum(1 for h in old if _running(h, now))
    candidates = [h for h in old if not _running(h, now)]
    task = progress.add_task("deleting", total=len(candidates)) if progress is not None else None
    deleted = 0
    for start in range(0, len(candidates), batch_size):
        chunk = candidates[start : start + batch_size]
        last = start + batch_size >= len(candidates)
        # Everything up to this batch's newest execution, never past the command's cutoff.
        span = (utcnow() - (chunk[-1].updated_at + _ONE_MICROSECOND)) / timedelta(days=1)
        deleted += await store.cleanup_old_executions_async(days if last else max(span, days))
        if progress is not None and task is not None:
            progress.update(task, advance=len(chunk))
    if not candidates:  # still purge the old tombstones
        deleted += await store.cleanup_old_executions_async(days)
    return {
        "backend": store.backend_name,
        "older_than_days": days,
        "cutoff": cutoff.isoformat(timespec="seconds"),
        "old": len(old),
        "deleted": deleted,
        "running_skipped": running,
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
    batch_size: Annotated[int, typer.Option(min=1, help="Executions deleted per batch.")] = 500,
    as_json: JsonOption = False,
) -> None:
    """Delete old finished executions in batches; running (leased) ones are never touched."""
    try:
        days = retention_days(None if older_than is None else parse_age(older_than))
    except ValueError as exc:
        _usage(f"--older-than: {exc}")

    async def work(store: DurableExecutionStorage) -> dict[str, Any]:
        if as_json:
            return await _clean(store, days, batch_size, None)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            return await _clean(store, days, batch_size, progress)

    result = _query(storage, work)
    typer.echo(_json(result) if as_json else _summary(result))
