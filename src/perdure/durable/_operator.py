"""Decisions an operator records while no attempt runs: approvals, denials, resolutions.

Why a module of its own: `perdure approve` and the dashboard act from a process that usually cannot
run the agent (it lacks the application's code), so a decision is a durable signal, as in Temporal
or DBOS, not a resume: it is journaled under the execution's lease and the run acts on it when it
next runs, in whatever process resumes it (a worker, `perdure resume`, `continue_durable`).

- Approvals: each call's decision is journaled on its own while others still wait (the head stays
  `paused`); the decision that completes the round journals the round itself (`round:<N>`, with the
  message history it continues, exactly what `continue_durable(approvals=...)` journals), which
  makes the head `success` with no lease: a worker resumes it at its next poll.
  `recorded_approvals` gives the per-call decisions to an in-process resume that passes the others.
- Resolutions of an interrupted non-idempotent call: `decision:<unit key>#<n>`, the entry the journal
  run looks for after that call's `started` marker; `abort` cancels the execution in the same write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai.tools import ToolApproved, ToolDenied

from ..errors import (
    ExecutionAborted,
    ExecutionCancelledError,
    ExecutionCompletedError,
    ExecutionConflictError,
    StorageUnavailableError,
)
from ..records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord
from ..storage.base import DurableExecutionStorage
from ._keys import decision_key, round_key
from ._prechecks import check_journal, interrupted_calls
from .checkpoints import effective_journal
from .decisions import ApprovalDecision, ToolResolution, approvals_from_json, approvals_to_json
from .leases import acquire_lease, default_worker_id

__all__ = ["DecisionOutcome", "decided_calls", "record_approval", "record_resolution", "recorded_approvals"]

_LEASE = 30.0
_APPROVAL = "approval:"
"""Pseudo unit of a per-call approval decision: `decision:approval:<round>/<call_id>#<n>`."""


@dataclass(frozen=True)
class DecisionOutcome:
    """What recording an operator's decision did."""

    execution_id: str
    call_id: str
    decision: str
    """`approved`, `denied`, or a resolution: `done`, `rerun`, `abort`."""
    ready: bool
    """True when the execution can continue now (every pending call decided); it runs at the next resume."""
    waiting: list[str] = field(default_factory=list)
    """Call ids of the round that still wait for a decision."""
    head: ExecutionRecord | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON data for `--json` and the dashboard."""
        return {
            "execution_id": self.execution_id,
            "call_id": self.call_id,
            "decision": self.decision,
            "ready": self.ready,
            "waiting": list(self.waiting),
            "status": self.head.status.value if self.head is not None else None,
        }


@asynccontextmanager
async def _leased(
    storage: DurableExecutionStorage, execution_id: str
) -> AsyncIterator[tuple[ExecutionRecord, list[StepRecord]]]:
    """Hold the execution's lease (`ExecutionLeasedError` when it runs) and yield its head and journal."""
    owner = default_worker_id()
    head = await acquire_lease(storage, execution_id, owner, _LEASE)
    try:
        journal = await storage.load_steps_async(execution_id)
        yield check_journal(storage, head, journal), journal
    finally:
        with suppress(StorageUnavailableError, OSError):  # the short lease expires on its own
            await storage.release_lease_async(execution_id, owner)


def _check_open(head: ExecutionRecord) -> None:
    if head.status is ExecutionStatus.COMPLETED:
        raise ExecutionCompletedError(head.execution_id)
    if head.status is ExecutionStatus.CANCELLED:
        raise ExecutionCancelledError(head.execution_id)


def _is_call_decision(step: StepRecord, round_no: int) -> bool:
    return (
        step.kind is StepKind.DECISION
        and step.key.startswith(f"decision:{_APPROVAL}{round_no}/")
        and isinstance(step.result, dict)
    )


def _recorded(journal: list[StepRecord], round_no: int) -> dict[str, dict[str, Any]]:
    """The per-call decisions journaled for approval round `round_no`, as journaled JSON."""
    found: dict[str, dict[str, Any]] = {}
    for step in journal:
        if _is_call_decision(step, round_no):
            data = dict(step.result)
            call_id = data.pop("tool_call_id", None)
            data.pop("round", None)
            if isinstance(call_id, str):
                found[call_id] = data
    return found


def recorded_approvals(head: ExecutionRecord, journal: list[StepRecord]) -> dict[str, ApprovalDecision]:
    """Decisions already recorded (`perdure approve` / `deny`) for the round `head` is paused on."""
    pending = head.pending
    if head.status is not ExecutionStatus.PAUSED or pending is None or pending.kind != "approval":
        return {}
    recorded = _recorded(journal, pending.round + 1)
    return dict(approvals_from_json(recorded).approvals) if recorded else {}


def decided_calls(head: ExecutionRecord, journal: list[StepRecord]) -> dict[str, str]:
    """The paused round's calls already decided, as an operator reads them (`approved`, `denied`, ...)."""
    texts: dict[str, str] = {}
    for call_id, decision in recorded_approvals(head, journal).items():
        if isinstance(decision, ToolDenied) or decision is False or isinstance(decision, str):
            texts[call_id] = "denied"
        elif isinstance(decision, ToolApproved) and decision.override_args is not None:
            texts[call_id] = "approved with edited arguments"
        else:
            texts[call_id] = "approved"
    return texts


async def record_approval(
    storage: DurableExecutionStorage, execution_id: str, call_id: str, decision: ApprovalDecision
) -> DecisionOutcome:
    """Journal an approval (or denial) of one pending call; the last one of the round starts the round."""
    async with _leased(storage, execution_id) as (head, journal):
        _check_open(head)
        pending = head.pending
        if head.status is not ExecutionStatus.PAUSED or pending is None or pending.kind != "approval":
            raise ExecutionConflictError(
                execution_id,
                f"Execution {execution_id!r} is not waiting for an approval (status {head.status.value}"
                f"{', it waits for a decision about an interrupted call: use resolve' if pending else ''}); "
                f"nothing was recorded.",
                status=head.status.value,
            )
        ids = [c.tool_call_id for c in pending.calls]
        if call_id not in ids:
            raise ExecutionConflictError(
                execution_id,
                f"Execution {execution_id!r} has no call {call_id!r} waiting for approval; it waits for "
                f"{', '.join(ids)}. Nothing was recorded.",
                status=head.status.value,
            )
        round_no = pending.round + 1
        recorded = _recorded(journal, round_no)
        if call_id in recorded:
            raise ExecutionConflictError(
                execution_id,
                f"Call {call_id!r} of execution {execution_id!r} was decided already "
                f"({'approved' if recorded[call_id].get('approved') else 'denied'}); a decision cannot be "
                f"changed. Waiting for: {', '.join(i for i in ids if i not in recorded) or 'nothing'}.",
                status=head.status.value,
            )
        item = approvals_to_json({call_id: decision})[call_id]
        decided = {**recorded, call_id: item}
        waiting = [i for i in ids if i not in decided]
        call = next(c for c in pending.calls if c.tool_call_id == call_id)
        if waiting:
            decisions = sum(1 for s in journal if s.kind is StepKind.DECISION)
            step = StepRecord(
                execution_id=execution_id,
                seq=head.next_seq,
                kind=StepKind.DECISION,
                name=f"approval:{call.tool_name}",
                key=decision_key(f"{_APPROVAL}{round_no}/{call_id}", decisions + 1),
                result={"tool_call_id": call_id, "round": round_no, **item},
            )
            new_head = head.noted(step)
        else:  # the round is complete: journal it as continue_durable(approvals=...) would
            step = StepRecord(
                execution_id=execution_id,
                seq=head.next_seq,
                kind=StepKind.DECISION,
                name="approval",
                key=round_key(round_no),
                result={
                    "round": round_no,
                    "messages": pending.messages or [],
                    "approvals": {i: decided[i] for i in ids},
                },
            )
            new_head = head.decided(step)
        await storage.append_step_async(new_head, step)
    label = "approved" if item.get("approved") else "denied"
    return DecisionOutcome(execution_id, call_id, label, not waiting, waiting, new_head)


async def record_resolution(
    storage: DurableExecutionStorage, execution_id: str, call_id: str, resolution: ToolResolution
) -> DecisionOutcome:
    """Journal the operator's resolution of an interrupted non-idempotent call (abort cancels now)."""
    async with _leased(storage, execution_id) as (head, journal):
        _check_open(head)
        active = effective_journal(journal)
        interrupted = interrupted_calls(active)
        if call_id not in interrupted:
            raise ExecutionConflictError(
                execution_id,
                f"Execution {execution_id!r} has no interrupted non-idempotent call {call_id!r}; "
                f"interrupted: {', '.join(interrupted) or 'none'}. Nothing was recorded.",
                status=head.status.value,
            )
        marker = min(
            (
                s
                for s in active
                if s.kind is StepKind.STARTED
                and isinstance(s.result, dict)
                and s.result.get("tool_call_id") == call_id
            ),
            key=lambda s: s.seq,
        )
        unit = marker.key.removeprefix("started:")
        decisions = sum(1 for s in journal if s.kind is StepKind.DECISION)
        step = StepRecord(
            execution_id=execution_id,
            seq=head.next_seq,
            kind=StepKind.DECISION,
            name=marker.name,
            key=decision_key(unit, decisions + 1),
            result={"tool_call_id": call_id, "action": resolution.action, "result": resolution.result},
        )
        new_head = head.decided(step)
        if resolution.action == "abort":
            new_head = new_head.cancelled(
                ExecutionAborted(execution_id, marker.name.removeprefix("tool:"), call_id)
            )
        await storage.append_step_async(new_head, step)
    ready = resolution.action != "abort"
    return DecisionOutcome(execution_id, call_id, resolution.action, ready, [], new_head)
