"""`execution_summary`: how far an execution got and what it cost, in one read of head and journal.

Why a summary of its own instead of the head's counters: the head counts usage, but progress
("7 of 10 units") and time spent need the journal (finished units, their durations, what a rewind
superseded), and savings need every resume, not the latest one (`ExecutionRecord.saved`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from ..records import ExecutionStatus, StepKind, StepRecord, utcnow
from ..storage.base import DurableExecutionStorage
from ._derive import RESULT_KINDS, run_name
from ._watch import resolve_storage

__all__ = ["ExecutionSummary", "execution_summary", "execution_summary_async"]


class ExecutionSummary(BaseModel):
    """Progress, usage and savings of one execution (the seed's `getExecutionSummary`)."""

    model_config = ConfigDict(frozen=True)

    execution_id: str
    name: str | None
    """The agent's name or the workflow's registered name."""
    status: ExecutionStatus
    running: bool
    """A worker holds an unexpired lease on it now (a `success` execution without one was interrupted
    or is between attempts)."""
    attempts: int
    completed_units: int
    """Finished units: model requests, tool calls and workflow steps journaled (each counted once)."""
    total_units: int | None
    """The expected number of units when the run declared it (`Task(expected_steps=N)`,
    `@workflow(steps=N)`), else None."""
    progress: float | None
    """`completed_units / total_units` as a percentage (capped at 100, exactly 100 once completed);
    None when the total is unknown."""
    model_requests: int
    tool_calls: int
    input_tokens: int
    output_tokens: int
    requests_saved: int
    """Model requests answered from the journal, over every resume: requests not paid twice."""
    tokens_saved: int
    tool_calls_saved: int
    """Tool calls answered from the journal over every resume: side effects not repeated."""
    time_spent: float
    """Seconds spent in journaled units (the sum of their durations, across attempts)."""
    elapsed: float
    """Seconds from the execution's creation to its last update."""
    created_at: datetime
    last_update: datetime
    error: str | None = None

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


def _counted(steps: list[StepRecord]) -> list[StepRecord]:
    """The result entries that count, without what a rewind superseded."""
    from ..durable.checkpoints import effective_journal  # late: perdure.durable imports this package

    return [step for step in effective_journal(steps) if step.kind in RESULT_KINDS]


async def execution_summary_async(
    execution_id: str, storage: DurableExecutionStorage | str | None = None
) -> ExecutionSummary:
    """The summary of `execution_id`; see `ExecutionSummary`.

    Raises:
        ExecutionNotFoundError: the storage holds no such execution.

    """
    store = resolve_storage(storage, "execution_summary")
    try:
        head = await store.load_state_async(execution_id)
        if head is None:
            raise store.not_found_error(execution_id)
        steps = _counted(await store.load_steps_async(execution_id))
    finally:
        if store is not storage:  # opened from a URL for this call
            await store.close_async()
    if head.task.workflow is not None:
        # A workflow's declared steps are its own positions (`w<n>`), not the units of nested agents.
        done = sum(1 for step in steps if "/" not in step.key and step.key.startswith("w"))
    else:
        done = sum(1 for step in steps if step.kind is not StepKind.CHECKPOINT)
    total = head.task.expected_steps
    progress: float | None = None
    if total:
        progress = 100.0 if head.status is ExecutionStatus.COMPLETED else min(100.0, 100.0 * done / total)
    now = utcnow()
    expires = head.lease_expires_at
    running = head.lease_owner is not None and expires is not None and expires.astimezone(UTC) > now
    return ExecutionSummary(
        execution_id=execution_id,
        name=run_name(head),
        status=head.status,
        running=running,
        attempts=head.attempts,
        completed_units=done,
        total_units=total,
        progress=progress,
        model_requests=head.usage.requests,
        tool_calls=head.usage.tool_calls,
        input_tokens=head.usage.input_tokens,
        output_tokens=head.usage.output_tokens,
        requests_saved=head.saved.requests,
        tokens_saved=head.saved.tokens,
        tool_calls_saved=head.saved.tool_calls,
        time_spent=sum(max(0.0, (s.finished_at - s.started_at).total_seconds()) for s in steps),
        elapsed=max(0.0, (head.updated_at - head.created_at).total_seconds()),
        created_at=head.created_at,
        last_update=head.updated_at,
        error=str(head.error) if head.error else None,
    )


def execution_summary(
    execution_id: str, storage: DurableExecutionStorage | str | None = None
) -> ExecutionSummary:
    """Sync twin of `execution_summary_async` (not inside a running event loop)."""
    from .._sync import run_sync

    return run_sync(execution_summary_async(execution_id, storage))
