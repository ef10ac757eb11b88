"""The `perdure` command: a recovery worker and a few operator commands.

    perdure worker --storage URL --app module:attr [--concurrency N] [--once] ...
    perdure list   --storage URL [--status S] [--limit N] [--json]
    perdure stats  --storage URL [--json]
    perdure show   --storage URL EXECUTION_ID [--steps N] [--json]

`--storage` also reads `PERDURE_STORAGE`, `--app` also reads `PERDURE_APP`. The logic lives in
`perdure.durable.worker` and `perdure.durable.recovery`; this module only parses and prints.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .durable.recovery import AgentResolver
from .durable.worker import Worker
from .errors import PerdureError
from .records import ExecutionRecord, ExecutionStatus
from .storage import DurableExecutionStorage, storage_from_url

__all__ = ["app", "load_app", "main"]

app = typer.Typer(
    help="perdure: durable AI-agent runs. Recover interrupted executions and inspect a storage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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


def load_app(reference: str) -> AgentResolver:
    """Import `module:attr` (attr may be dotted) the way uvicorn does: the current dir is importable."""
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise typer.BadParameter(f"expected module:attribute, got {reference!r}", param_hint="--app")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise typer.BadParameter(f"cannot import {reference!r}: {exc}", param_hint="--app") from exc
    return target


def _open(url: str) -> DurableExecutionStorage:
    try:
        return storage_from_url(url)
    except PerdureError as exc:
        raise typer.BadParameter(str(exc), param_hint="--storage") from exc


def _query(url: str, work: Any) -> Any:
    """Open the storage, await `work(storage)`, close the storage."""

    async def run() -> Any:
        storage = _open(url)
        try:
            return await work(storage)
        finally:
            await storage.close_async()

    return asyncio.run(run())


@app.command()
def worker(
    storage: StorageOption,
    app_ref: Annotated[
        str,
        typer.Option(
            "--app",
            envvar="PERDURE_APP",
            help="module:attr of a perdure Agent, a pydantic-ai Agent with PerdureDurability, a dict "
            "{agent_name: agent} or a callable (head) -> agent.",
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
    once: Annotated[bool, typer.Option(help="One recovery pass, then exit (1 if any failed).")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
) -> None:
    """Recover interrupted executions: once at start-up, then every poll interval, until SIGTERM."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    logging.basicConfig(
        level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    resolver = load_app(app_ref)
    statuses = [ExecutionStatus.SUCCESS, *([ExecutionStatus.FAILED] if retry_failed else [])]

    async def run(store: DurableExecutionStorage) -> int:
        runner = Worker(
            store,
            resolver,
            concurrency=concurrency,
            poll_interval=poll_interval,
            grace_period=grace_period,
            max_attempts=max_attempts,
            delay=delay,
            timeout=timeout,
            lease_ttl=lease_ttl,
            min_idle=min_idle,
            worker_id=worker_id,
            statuses=statuses,
        )
        report = await runner.run_async(once=once, handle_signals=True)
        return 1 if once and report.failed else 0

    try:
        code = _query(storage, run)
    except PerdureError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(code)


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


@app.command("list")
def list_executions(
    storage: StorageOption,
    status: Annotated[ExecutionStatus | None, typer.Option(help="Only this status.")] = None,
    limit: Annotated[int | None, typer.Option(min=0, help="At most this many (newest first).")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List executions, most recently updated first."""
    heads: list[ExecutionRecord] = _query(storage, lambda s: s.list_executions_async(status, limit))
    rows = [_row(h) for h in heads]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(*_LIST_COLUMNS)
    for row in rows:
        table.add_row(*(str(row[c])[:80] for c in _LIST_COLUMNS))
    Console().print(table)


@app.command()
def stats(storage: StorageOption, as_json: JsonOption = False) -> None:
    """Count executions by status."""
    data: dict[str, Any] = _query(storage, lambda s: s.get_stats_async())
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table("status", "executions", title=f"{data['backend']}: {data['total_executions']} executions")
    for name, count in data["by_status"].items():
        table.add_row(name, str(count))
    Console().print(table)


@app.command()
def show(
    storage: StorageOption,
    execution_id: Annotated[str, typer.Argument(help="The execution to show.")],
    steps: Annotated[int, typer.Option(min=0, help="Show the last N journal entries.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Show an execution's head and a summary of its journal."""

    async def load(store: DurableExecutionStorage) -> tuple[ExecutionRecord | None, list[Any]]:
        head = await store.load_state_async(execution_id)
        return head, (await store.load_steps_async(execution_id) if head is not None else [])

    head, journal = _query(storage, load)
    if head is None:
        typer.echo(f"execution {execution_id!r} not found", err=True)
        raise typer.Exit(1)
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
        typer.echo(
            json.dumps({"head": head.info(), "journal_size": len(journal), "journal": entries}, indent=2)
        )
        return
    console = Console()
    info = Table(show_header=False, title=f"execution {execution_id}")
    for key, value in _row(head).items():
        info.add_row(key, str(value))
    info.add_row("usage", head.usage.model_dump_json())
    info.add_row("task", head.task.description[:200])
    console.print(info)
    journal_table = Table(*entries[0].keys(), title=f"journal: {len(journal)} entries") if entries else None
    if journal_table is not None:
        for entry in entries:
            journal_table.add_row(*(str(v) for v in entry.values()))
        console.print(journal_table)


def main() -> None:
    """Entry point of the `perdure` console script."""
    app()


if __name__ == "__main__":
    main()
