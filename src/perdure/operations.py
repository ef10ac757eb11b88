"""Operator actions on executions, shared by the `perdure` CLI and the dashboard.

Every function is async, takes the storage first, and raises perdure's typed errors, which name the
execution and say what to do next:

- `ExecutionNotFoundError`: no such execution (CLI exit 3);
- conflicts (CLI exit 4): `ExecutionLeasedError` (a worker runs it now), `ExecutionCompletedError`,
  `ExecutionCancelledError`, `ExecutionConflictError` (e.g. approving a run that is not paused);
- `UserError`: a wrong argument, or no agent to resume with (CLI exit 2).

Decisions (`approve`, `deny`, `resolve`) are durable signals, as in Temporal and DBOS: they are
journaled under the execution's lease and acted on when the execution next runs, in whatever process
resumes it. When the last pending call of an approval round is decided, the execution becomes
resumable (`success`, no lease): a running `perdure worker` picks it up at its next poll, or
`resume` runs it now in this process. Nothing here needs the agent's code except `resume`,
`retry_failed` and `recover`, which take a resolver: an agent, a workflow, a list of them, a
`{agent_name: agent}` mapping or a callable `(head) -> agent` (what `perdure worker --app` accepts).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Literal

from pydantic_ai.tools import ToolApproved, ToolDenied

from .durable._cancel import CancelOutcome, cancel_execution_async
from .durable._operator import DecisionOutcome, record_approval, record_resolution
from .durable.checkpoints import fork_async
from .durable.decisions import ToolResolution
from .durable.identity import normalize_allow_changes
from .durable.leases import DEFAULT_LEASE_TTL, acquire_lease, default_worker_id
from .durable.recovery import (
    AgentNotServedError,
    AgentResolver,
    RecoveryOptions,
    RecoveryReport,
    recorded_agent_name,
    recover_execution_async,
    recover_interrupted_async,
    resolve_agent,
    resume_leased,
)
from .errors import (
    ExecutionCancelledError,
    ExecutionCompletedError,
    ExecutionConflictError,
    UserError,
)
from .records import ExecutionRecord, ExecutionStatus
from .storage.base import DurableExecutionStorage

__all__ = [
    "CancelOutcome",
    "DecisionOutcome",
    "ResumeOutcome",
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

Progress = Callable[[int, int, str], None]
"""`progress(done, total, execution_id)`, called after each execution of a batch."""


@dataclass(frozen=True)
class ResumeOutcome:
    """How a resume ended: the execution's head after it."""

    execution_id: str
    head: ExecutionRecord

    @property
    def status(self) -> ExecutionStatus:
        """`completed`, `paused` (waiting for decisions again), ..."""
        return self.head.status

    @property
    def output(self) -> Any:
        """The output (JSON data) once completed, else None."""
        return self.head.output

    def to_json(self) -> dict[str, Any]:
        """JSON data for `--json` and the dashboard."""
        pending = self.head.pending
        return {
            "execution_id": self.execution_id,
            "status": self.status.value,
            "output": self.output,
            "pending": [c.model_dump(mode="json") for c in pending.calls] if pending else [],
        }


async def _head(storage: DurableExecutionStorage, execution_id: str) -> ExecutionRecord:
    head = await storage.load_state_async(execution_id)
    if head is None:
        raise storage.not_found_error(execution_id)
    return head


def _check_resumable(head: ExecutionRecord) -> None:
    """Refuse what a resume cannot do: finished executions, and pauses that still need decisions."""
    execution_id = head.execution_id
    if head.status is ExecutionStatus.COMPLETED:
        raise ExecutionCompletedError(execution_id)
    if head.status is ExecutionStatus.CANCELLED:
        raise ExecutionCancelledError(execution_id)
    pending = head.pending
    if head.status is ExecutionStatus.PAUSED and pending is not None:
        calls = ", ".join(f"{c.tool_name} ({c.tool_call_id})" for c in pending.calls)
        what = (
            "approve or deny each call first (perdure approve / deny, or operations.approve / deny)"
            if pending.kind == "approval"
            else "resolve the interrupted call first (perdure resolve ID CALL_ID done|rerun|abort)"
        )
        raise ExecutionConflictError(
            execution_id,
            f"Execution {execution_id!r} is paused waiting for a decision about {calls}: {what}.",
            status=head.status.value,
        )


async def resume(
    storage: DurableExecutionStorage,
    execution_id: str,
    resolver: AgentResolver | None = None,
    *,
    allow_changes: Iterable[str] = (),
    lease_ttl: float = DEFAULT_LEASE_TTL,
    wait_for_lease: float | None = None,
) -> ResumeOutcome:
    """Resume one execution now, in this process, from its journal; return how it ended.

    The agent is chosen as a worker chooses it: by the agent name the execution recorded, among
    what `resolver` serves (see the module docstring). A workflow execution runs the workflow this
    program registered under its recorded name (importing its module registers it), so `resolver`
    may be None for workflows.

    Args:
        storage: Where the execution lives.
        execution_id: The execution to resume (interrupted, failed, or paused with every decision
            recorded).
        resolver: The agent(s) to resume with.
        allow_changes: Identity differences to accept on purpose (`tools`, `output`, ...).
        lease_ttl: Lease seconds while it runs (renewed by its heartbeat).
        wait_for_lease: Seconds to wait for another worker's lease (None: conflict at once).

    Raises:
        ExecutionNotFoundError, ExecutionLeasedError, ExecutionCompletedError, ExecutionCancelledError,
        ExecutionConflictError (paused, waiting for decisions), UserError (no agent for it), and the
        error the run itself failed with (the execution is then `failed`, its journal intact).

    """
    head = await _head(storage, execution_id)
    _check_resumable(head)
    owner = default_worker_id()
    leased = await acquire_lease(storage, execution_id, owner, lease_ttl, wait=wait_for_lease)
    try:
        _check_resumable(leased)
        agent = await _agent_for(resolver, leased)
        options = RecoveryOptions(lease_ttl=lease_ttl, allow_changes=normalize_allow_changes(allow_changes))
        await resume_leased(storage, agent, leased, owner, options)
    finally:
        with suppress(Exception):  # the lease expires on its own; keep the outcome
            await storage.release_lease_async(execution_id, owner)
    return ResumeOutcome(execution_id, await _head(storage, execution_id))


async def _agent_for(resolver: AgentResolver | None, head: ExecutionRecord) -> Any:
    name = recorded_agent_name(head)
    if resolver is None:
        if head.task.workflow is not None:
            return None  # the registered workflow of the recorded name
        raise UserError(
            f"Execution {head.execution_id!r} ran agent {name!r}: pass the agent to resume it with "
            f"(resolver=..., or `--app module:attr` on the command line)."
        )
    try:
        return await resolve_agent(resolver, head)
    except AgentNotServedError:
        if head.task.workflow is not None:
            return None
        raise UserError(
            f"Execution {head.execution_id!r} ran agent {name!r}, which the given agents do not serve; "
            f"pass that agent (`--app module:attr`; agents are matched by name)."
        ) from None


async def approve(
    storage: DurableExecutionStorage,
    execution_id: str,
    call_id: str,
    args: dict[str, Any] | None = None,
) -> DecisionOutcome:
    """Approve one pending tool call of a paused execution, optionally with edited arguments.

    The decision is journaled (durable); the execution continues when it next runs. When it was the
    last undecided call, the execution becomes resumable at once (`outcome.ready`): a worker resumes
    it at its next poll, or call `resume`. `args` replaces the call's arguments (pydantic-ai's
    `ToolApproved(override_args=args)`).

    Raises:
        ExecutionNotFoundError, ExecutionLeasedError, ExecutionCompletedError, ExecutionCancelledError,
        ExecutionConflictError (not paused for approval, unknown call id, call already decided).

    """
    if args is not None and not isinstance(args, dict):
        raise UserError(f"approve: args must be a JSON object of the tool's arguments, got {args!r}.")
    decision = ToolApproved(override_args=args) if args is not None else ToolApproved()
    return await record_approval(storage, execution_id, call_id, decision)


async def deny(
    storage: DurableExecutionStorage, execution_id: str, call_id: str, message: str | None = None
) -> DecisionOutcome:
    """Deny one pending tool call of a paused execution; `message` is what the model sees as its result.

    Recorded like `approve` (same errors); the tool never runs for this call.
    """
    return await record_approval(
        storage, execution_id, call_id, ToolDenied(message) if message else ToolDenied()
    )


async def resolve(
    storage: DurableExecutionStorage,
    execution_id: str,
    call_id: str,
    action: Literal["done", "rerun", "abort"],
    result: Any = None,
) -> DecisionOutcome:
    """Decide about a non-idempotent tool call that was interrupted mid-effect (started, never recorded).

    `done`: it took effect; `result` becomes its return value and it is not called again. `rerun`:
    it did not; call it again. `abort`: cancel the execution now. For `done` and `rerun` the
    execution becomes resumable (a worker or `resume` continues it).

    Raises:
        ExecutionNotFoundError, ExecutionLeasedError, ExecutionCompletedError, ExecutionCancelledError,
        ExecutionConflictError (no such interrupted call), UserError (unknown action).

    """
    if action == "done":
        resolution = ToolResolution.done(result)
    elif action in ("rerun", "abort"):
        if result is not None:
            raise UserError(f"resolve: a result is only taken with 'done', not with {action!r}.")
        resolution = ToolResolution(action)
    else:
        raise UserError(f"resolve: action must be 'done', 'rerun' or 'abort', got {action!r}.")
    return await record_resolution(storage, execution_id, call_id, resolution)


async def cancel(
    storage: DurableExecutionStorage,
    execution_id: str,
    reason: str = "",
    *,
    requested_by: str | None = None,
    wait: float | None = None,
) -> CancelOutcome:
    """Cancel an execution (`DurableExecution.cancel`): now when idle, at its next unit boundary when running.

    Returns a `CancelOutcome` (`state`: `cancelled`, `requested`, `already_cancelled`). Raises
    `ExecutionNotFoundError`, and `ExecutionCompletedError` when it completed already.
    """
    return await cancel_execution_async(storage, execution_id, reason, requested_by=requested_by, wait=wait)


async def delete(storage: DurableExecutionStorage, execution_id: str, force: bool = False) -> None:
    """Delete an execution's head and journal.

    A running execution (live lease) raises `ExecutionLeasedError` unless `force`; a forced delete
    makes the running attempt fail at its next write. Raises `ExecutionNotFoundError` when absent.
    """
    if not await storage.delete_state_async(execution_id, force=force):
        raise storage.not_found_error(execution_id)


async def fork(storage: DurableExecutionStorage, execution_id: str, at_step: int) -> str:
    """A new execution whose journal is this one's up to step `at_step`; returns its id.

    Resume it like any execution (`resume`, a worker): the prefix replays, the rest runs live.
    """
    return await fork_async(execution_id, storage, at_step=at_step)


async def retry_failed(
    storage: DurableExecutionStorage,
    resolver: AgentResolver,
    *,
    limit: int | None = None,
    concurrency: int = 1,
    allow_changes: Iterable[str] = (),
    lease_ttl: float = DEFAULT_LEASE_TTL,
    progress: Progress | None = None,
) -> RecoveryReport:
    """Resume every `failed` execution once (oldest first), `concurrency` at a time; return the summary.

    Each is resumed under its lease as a worker would (executions of agents `resolver` does not serve
    are counted in `not_served`; running ones are skipped). `str(report)` is a one-line summary.
    `progress(done, total, execution_id)` is called after each.
    """
    if concurrency < 1:
        raise UserError(f"concurrency must be >= 1, got {concurrency!r}.")
    options = RecoveryOptions(
        max_attempts=sys.maxsize,  # an operator's retry is never refused for having failed before
        min_idle=0.0,
        lease_ttl=lease_ttl,
        statuses=(ExecutionStatus.FAILED,),
        allow_changes=normalize_allow_changes(allow_changes),
    )
    heads = await storage.list_executions_async(status=ExecutionStatus.FAILED)
    heads.sort(key=lambda h: (h.updated_at, h.execution_id))
    if limit is not None:
        heads = heads[: max(limit, 0)]
    report = RecoveryReport()
    total = len(heads)
    done = 0
    semaphore = asyncio.Semaphore(concurrency)

    async def one(head: ExecutionRecord) -> None:
        nonlocal done
        async with semaphore:
            try:
                outcome = await recover_execution_async(storage, head, resolver, options)
            except Exception as exc:  # e.g. the storage failed taking the lease: report, go on
                outcome = RecoveryReport(failed={head.execution_id: f"{type(exc).__name__}: {exc}"})
            report.merge(outcome)
            done += 1
            if progress is not None:
                progress(done, total, head.execution_id)

    await asyncio.gather(*(one(head) for head in heads))
    return report


async def recover(
    storage: DurableExecutionStorage,
    resolver: AgentResolver,
    *,
    options: RecoveryOptions | None = None,
    concurrency: int = 1,
) -> RecoveryReport:
    """One recovery pass: resume every interrupted execution whose lease expired (`perdure worker --once`)."""
    return await recover_interrupted_async(
        storage, resolver, options=options or RecoveryOptions(), concurrency=concurrency
    )
