"""The action commands of `perdure`: they change executions (the other commands only read).

`resume`, `approve`, `deny`, `resolve`, `cancel`, `delete`, `retry-failed`, `fork`, `recover`.

Each parses its options and calls one function of `perdure.operations` (the layer the dashboard
shares), then prints one line (or `--json`). Errors follow `perdure.cli._app`: one line on stderr,
exit 3 when the execution (or storage) does not exist, 4 for a conflict (running elsewhere, already
completed or cancelled, not paused for this decision), 2 for usage errors, 1 otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import operations
from ..durable.leases import DEFAULT_LEASE_TTL, default_worker_id
from ..durable.recovery import AgentResolver, RecoveryOptions, RecoveryReport
from ..settings import settings
from ..storage import DurableExecutionStorage
from ._app import EXIT_FAILURE, JsonOption, StorageOption, _query, _usage, app
from ._engines import EngineOption, choose_engine, engine_action
from ._format import _json, safe_text
from ._resolve import build_resolver
from ._worker import _allow_changes, summarize_report

__all__ = [
    "approve",
    "cancel",
    "delete",
    "deny",
    "fork",
    "recover",
    "resolve",
    "resume",
    "retry_failed",
]

AppOption = Annotated[
    list[str] | None,
    typer.Option(
        "--app",
        envvar="PERDURE_APP",
        metavar="MODULE:ATTR",
        show_default=False,
        help="module:attr of the agent(s) or workflow to run (as `perdure worker --app`); repeatable.",
    ),
]
AllowChangesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-changes",
        metavar="KINDS",
        show_default=False,
        help="Identity differences to accept on purpose: tools, output, instructions, prompt, workflow.",
    ),
]
ExecutionId = Annotated[str, typer.Argument(metavar="ID", help="The execution id.", show_default=False)]
LeaseTtlOption = Annotated[float | None, typer.Option(min=0.1, show_default=False, help="Lease seconds.")]
ConcurrencyOption = Annotated[int, typer.Option(min=1, help="Executions resumed at the same time.")]
CallId = Annotated[
    str, typer.Argument(metavar="CALL_ID", help="The pending tool call id.", show_default=False)
]


def _lease_ttl(value: float | None) -> float:
    return settings().lease_ttl if value is None else value


def _print(data: dict[str, Any], line: str, as_json: bool) -> None:
    typer.echo(_json(data) if as_json else safe_text(line))


def _parse_json(option: str, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        _usage(f"{option}: not valid JSON: {exc}")


def _report_json(report: RecoveryReport) -> dict[str, Any]:
    return {
        "recovered": report.recovered,
        "paused": report.paused,
        "failed": report.failed,
        "skipped": report.skipped,
        "not_served": report.not_served,
        "summary": str(report),
    }


@app.command()
def resume(
    execution_id: ExecutionId,
    storage: StorageOption = None,
    app_refs: AppOption = None,
    allow_changes: AllowChangesOption = None,
    lease_ttl: LeaseTtlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Resume one execution now, in this process (with the agent it recorded, from --app)."""
    changes = _allow_changes(allow_changes)
    resolver: AgentResolver | None = build_resolver(app_refs) if app_refs else None

    async def work(store: DurableExecutionStorage) -> operations.ResumeOutcome:
        return await operations.resume(
            store, execution_id, resolver, allow_changes=changes, lease_ttl=_lease_ttl(lease_ttl)
        )

    outcome = _query(storage, work)
    data = outcome.to_json()
    line = f"{execution_id}: {outcome.status.value}"
    if data["pending"]:
        line += " waiting for " + ", ".join(
            f"{c['tool_name']} ({c['tool_call_id']})" for c in data["pending"]
        )
    elif outcome.output is not None:
        line += f"; output: {json.dumps(outcome.output, ensure_ascii=False)[:500]}"
    _print(data, line, as_json)


def _decision_line(outcome: Any) -> str:
    line = f"{outcome.execution_id}: {outcome.call_id} {outcome.decision}"
    if outcome.waiting:
        return f"{line}; still waiting for {', '.join(outcome.waiting)}"
    if outcome.ready:
        return f"{line}; the execution continues at its next resume (a worker, or `perdure resume`)"
    return line


@app.command()
def approve(
    execution_id: ExecutionId,
    call_id: CallId,
    storage: StorageOption = None,
    args: Annotated[
        str | None,
        typer.Option("--args", metavar="JSON", show_default=False, help="Edited arguments (a JSON object)."),
    ] = None,
    as_json: JsonOption = False,
    engine: EngineOption = None,
) -> None:
    """Approve a pending tool call of a paused execution (recorded; the run continues when resumed).

    With `--engine temporal|dbos` the decision goes to the engine's waiting run (a Temporal update, a
    DBOS message), which continues at once.
    """
    override = _parse_json("--args", args)
    if override is not None and not isinstance(override, dict):
        _usage("--args: expected a JSON object of the tool's arguments")
    engine_name = choose_engine(engine)
    if engine_name != "embedded":
        engine_action(engine_name, execution_id, "approve", call_id=call_id, args=override)
        return
    outcome = _query(storage, lambda store: operations.approve(store, execution_id, call_id, override))
    _print(outcome.to_json(), _decision_line(outcome), as_json)


@app.command()
def deny(
    execution_id: ExecutionId,
    call_id: CallId,
    storage: StorageOption = None,
    message: Annotated[
        str | None,
        typer.Option("--message", show_default=False, help="What the model sees as the tool's result."),
    ] = None,
    as_json: JsonOption = False,
    engine: EngineOption = None,
) -> None:
    """Deny a pending tool call of a paused execution (recorded; the run continues when resumed).

    With `--engine temporal|dbos` the decision goes to the engine's waiting run.
    """
    engine_name = choose_engine(engine)
    if engine_name != "embedded":
        engine_action(engine_name, execution_id, "deny", call_id=call_id, message=message)
        return
    outcome = _query(storage, lambda store: operations.deny(store, execution_id, call_id, message))
    _print(outcome.to_json(), _decision_line(outcome), as_json)


@app.command()
def resolve(
    execution_id: ExecutionId,
    call_id: CallId,
    action: Annotated[str, typer.Argument(metavar="done|rerun|abort", help="What happened to the call.")],
    storage: StorageOption = None,
    result: Annotated[
        str | None,
        typer.Option("--result", metavar="JSON", show_default=False, help="The call's result (with done)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Decide about an interrupted non-idempotent call: done (took effect), rerun, or abort (cancel)."""
    if action not in ("done", "rerun", "abort"):
        _usage(f"ACTION must be done, rerun or abort, got {action!r}")
    if result is not None and action != "done":
        _usage("--result is only taken with done")
    value = _parse_json("--result", result)
    outcome = _query(
        storage,
        lambda store: operations.resolve(store, execution_id, call_id, action, value),  # type: ignore[arg-type]
    )
    line = _decision_line(outcome) if action != "abort" else f"{execution_id}: aborted; status cancelled"
    _print(outcome.to_json(), line, as_json)


@app.command()
def cancel(
    execution_id: ExecutionId,
    storage: StorageOption = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (stored with the execution).")] = "",
    wait: Annotated[
        float | None,
        typer.Option(min=0, show_default=False, help="Seconds to wait for a running execution to stop."),
    ] = None,
    as_json: JsonOption = False,
    engine: EngineOption = None,
) -> None:
    """Cancel an execution: at once when idle, at its next unit boundary when running.

    With `--engine temporal|dbos|prefect` the engine cancels the run.
    """
    engine_name = choose_engine(engine)
    if engine_name != "embedded":
        engine_action(engine_name, execution_id, "cancel", reason=reason)
        return
    outcome = _query(storage, lambda store: operations.cancel(store, execution_id, reason, wait=wait))
    lines = {
        "cancelled": f"{execution_id}: cancelled",
        "already_cancelled": f"{execution_id}: already cancelled",
        "requested": f"{execution_id}: cancel requested; it stops at its next unit boundary",
    }
    _print(outcome.to_json(), lines[outcome.state], as_json)


@app.command()
def delete(
    execution_id: ExecutionId,
    storage: StorageOption = None,
    force: Annotated[bool, typer.Option("--force", help="Delete even while a worker runs it.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete an execution's head and journal (a running one only with --force)."""
    _query(storage, lambda store: operations.delete(store, execution_id, force))
    _print({"execution_id": execution_id, "deleted": True}, f"{execution_id}: deleted", as_json)


@app.command()
def fork(
    execution_id: ExecutionId,
    at_step: Annotated[int, typer.Option("--at-step", min=0, help="Last journal step the fork keeps.")],
    storage: StorageOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fork an execution: a new one with its journal up to --at-step (resume it to run the rest)."""
    new_id = _query(storage, lambda store: operations.fork(store, execution_id, at_step))
    _print({"execution_id": new_id, "parent_id": execution_id, "at_step": at_step}, new_id, as_json)


def _resolver(app_refs: Sequence[str] | None) -> AgentResolver:
    return build_resolver(list(app_refs or ()))  # --app is required: a usage error without it


@app.command("retry-failed")
def retry_failed(
    app_refs: AppOption = None,
    storage: StorageOption = None,
    limit: Annotated[int | None, typer.Option(min=1, show_default=False, help="Retry at most N.")] = None,
    concurrency: ConcurrencyOption = 1,
    allow_changes: AllowChangesOption = None,
    lease_ttl: LeaseTtlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Resume every failed execution once, with a progress bar; exit 1 if any failed again."""
    changes = _allow_changes(allow_changes)
    resolver = _resolver(app_refs)

    async def work(store: DurableExecutionStorage) -> RecoveryReport:
        ttl = _lease_ttl(lease_ttl)
        if as_json:
            return await operations.retry_failed(
                store, resolver, limit=limit, concurrency=concurrency, allow_changes=changes, lease_ttl=ttl
            )
        columns = (
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("retrying", total=None)

            def progress(done: int, total: int, _execution_id: str) -> None:
                bar.update(task, completed=done, total=total)

            return await operations.retry_failed(
                store,
                resolver,
                limit=limit,
                concurrency=concurrency,
                allow_changes=changes,
                lease_ttl=ttl,
                progress=progress,
            )

    report = _query(storage, work)
    _print(_report_json(report), summarize_report(report), as_json)
    if report.failed:
        raise typer.Exit(EXIT_FAILURE)


@app.command()
def recover(
    app_refs: AppOption = None,
    storage: StorageOption = None,
    concurrency: ConcurrencyOption = 1,
    max_attempts: Annotated[int, typer.Option(min=1, help="Attempts before giving up (mark failed).")] = 5,
    allow_changes: AllowChangesOption = None,
    lease_ttl: LeaseTtlOption = None,
    as_json: JsonOption = False,
) -> None:
    """One recovery pass (`perdure worker --once`): resume interrupted executions; exit 1 if any failed."""
    changes = _allow_changes(allow_changes)
    resolver = _resolver(app_refs)
    options = RecoveryOptions(
        max_attempts=max_attempts,
        lease_ttl=_lease_ttl(lease_ttl) or DEFAULT_LEASE_TTL,
        worker_id=default_worker_id(),
        allow_changes=frozenset(changes),
    )
    report = _query(
        storage, lambda store: operations.recover(store, resolver, options=options, concurrency=concurrency)
    )
    _print(_report_json(report), summarize_report(report), as_json)
    if report.failed:
        raise typer.Exit(EXIT_FAILURE)
