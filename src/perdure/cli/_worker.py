"""`perdure worker`: parse the worker's options, run `perdure.durable.worker.Worker`, report a pass.

The recovery itself lives in `perdure.durable.worker` and `perdure.durable.recovery`; this module
only turns options into `RecoveryOptions`, checks the storage answers before starting, sets up
escaped logging, and for `--once` prints the pass's summary and exits 1 if any execution failed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from ..durable.identity import CHANGE_KINDS as _KINDS
from ..durable.leases import default_worker_id
from ..durable.recovery import RecoveryOptions, RecoveryReport
from ..durable.worker import Worker
from ..errors import StorageNotFoundError, UserError
from ..records import ExecutionStatus
from ..settings import settings
from ..storage import DurableExecutionStorage
from ..storage.base import retention_keep as retention_keep_statuses
from ._alert_options import AlertOption, AlertWebhookOption, parse_alerts
from ._app import EXIT_FAILURE, StorageOption, _open, _quiet, _replaceable, _run, _storage_url, _usage, app
from ._engines import (
    AddressOption,
    DbosUrlOption,
    EngineOption,
    NamespaceOption,
    TaskQueueOption,
    choose_engine,
    serve_engine,
)
from ._format import _SafeFormatter, safe_text
from ._resolve import build_resolver

__all__ = ["CHANGE_KINDS", "logger", "summarize_report", "worker"]

logger = logging.getLogger("perdure.cli")

CHANGE_KINDS = tuple(k for k in ("tools", "output", "instructions", "prompt", "workflow") if k in _KINDS)
"""What `--allow-changes` may name (the identity differences a resume may accept)."""


def _allow_changes(values: Sequence[str] | None) -> frozenset[str]:
    """The kinds `--allow-changes` names; an unknown one is a usage error, not silently ignored."""
    kinds = {part.strip().lower() for value in values or () for part in value.split(",") if part.strip()}
    unknown = sorted(kinds - set(CHANGE_KINDS))
    if unknown:
        _usage(
            f"--allow-changes: unknown value(s) {', '.join(map(repr, unknown))}; use any of "
            f"{', '.join(CHANGE_KINDS)} (comma-separated or repeated)"
        )
    return frozenset(kinds)


def summarize_report(report: RecoveryReport) -> str:
    """One line for the end of `worker --once`: the counts, and which agents it did not serve.

    Args:
        report: The report of the recovery pass.

    Returns:
        The line, escaped (agent names come from the storage).

    """
    line = str(report)
    names = sorted({name or "(unnamed)" for name in report.not_served.values()})
    if names:
        line += f" (agents: {', '.join(names)})"
    return safe_text(line)


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
    storage: StorageOption = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Executions resumed at the same time.")] = 1,
    poll_interval: Annotated[float, typer.Option(min=0.01, help="Seconds between polls.")] = 5.0,
    lease_ttl: Annotated[
        float | None,
        typer.Option(min=0.1, show_default=False, help="Lease seconds, renewed by heartbeat [default: 30]."),
    ] = None,
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
    log_level: Annotated[
        str | None,
        typer.Option(show_default=False, help="DEBUG, INFO, WARNING, ERROR [default: INFO]."),
    ] = None,
    retention_days: Annotated[
        float | None,
        typer.Option(
            min=0,
            show_default=False,
            help="Delete executions last updated more than this many days ago, on a schedule "
            "[default: PERDURE_RETENTION_DAYS; off when unset].",
        ),
    ] = None,
    cleanup_every: Annotated[
        float, typer.Option(min=1, help="Seconds between two cleanups (with --retention-days).")
    ] = 3600.0,
    retention_keep: Annotated[
        list[str] | None,
        typer.Option(
            "--retention-keep",
            metavar="STATUS",
            show_default=False,
            help="Statuses the scheduled cleanup never deletes (repeatable or comma-separated, e.g. "
            "failed) [default: PERDURE_RETENTION_KEEP, else none].",
        ),
    ] = None,
    alert: AlertOption = None,
    alert_webhook: AlertWebhookOption = None,
    engine: EngineOption = None,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    task_queue: TaskQueueOption = None,
    dbos_url: DbosUrlOption = None,
) -> None:
    """Recover interrupted executions: once at start-up, then every poll interval, until SIGTERM.

    With `--engine temporal|dbos|prefect` (or `PERDURE_ENGINE`) the worker serves the `--app`
    agents on that engine instead (`--address`, `--namespace`, `--task-queue` for Temporal,
    `--dbos-url` for DBOS); the engine recovers interrupted runs itself and the storage options
    do not apply.

    `--storage`, `--lease-ttl`, `--log-level`, `--retention-days` and `--retention-keep` default to
    perdure's settings (`perdure config`): `PERDURE_STORAGE_URL`, `PERDURE_LEASE_TTL`,
    `PERDURE_LOG_LEVEL` (else INFO), `PERDURE_RETENTION_DAYS` (else no cleanup) and
    `PERDURE_RETENTION_KEEP`; with `PERDURE_TTL` set, completed executions are deleted that many
    seconds after they completed, on the cleanup schedule.
    """
    engine_name = choose_engine(
        engine, address=address, namespace=namespace, task_queue=task_queue, dbos_url=dbos_url
    )
    configured = settings()
    log_level = log_level or configured.log_level or "INFO"
    if engine_name != "embedded":
        serve_engine(engine_name, app_refs, log_level)
        return
    lease_ttl = configured.lease_ttl if lease_ttl is None else lease_ttl
    retention_days = configured.retention_days if retention_days is None else retention_days
    try:
        keep = retention_keep_statuses(None if retention_keep is None else ",".join(retention_keep))
    except UserError as exc:
        _usage(f"--retention-keep: {str(exc).removeprefix('keep_statuses: ')}")
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        _usage(f"--log-level: unknown level {log_level!r}; use DEBUG, INFO, WARNING or ERROR")
    changes = _allow_changes(allow_changes)
    alerts = parse_alerts(alert, alert_webhook)
    resolver = build_resolver(app_refs)  # before connecting: a wrong --app never touches the storage
    url = _storage_url(storage)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("perdure").setLevel(level)
    statuses = [ExecutionStatus.SUCCESS, *([ExecutionStatus.FAILED] if retry_failed else [])]

    async def run() -> int:
        store = _open(url)
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
            runner = _replaceable("Worker", Worker)(
                store,
                resolver,
                concurrency=concurrency,
                poll_interval=poll_interval,
                grace_period=grace_period,
                options=options,
                retention_days=retention_days,
                cleanup_every=cleanup_every,
                retention_keep=keep,
                completed_ttl=configured.ttl,
                alerts=alerts,
            )
            await _probe(store, once=once, poll_interval=poll_interval)
            report = await runner.run_async(once=once, handle_signals=True)
        finally:
            await store.close_async()
        if once:
            typer.echo(summarize_report(report), err=True)
        return EXIT_FAILURE if once and report.failed else 0

    raise typer.Exit(_run(run, quiet=False))
