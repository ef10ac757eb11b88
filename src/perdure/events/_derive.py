"""Events built from what the engine knows: a unit about to run, a journal entry, a head.

Why in one module: the in-process engine (`JournalRun`) and the cross-process watcher
(`perdure.watch`, which only sees stored heads and journal entries) must describe the same unit the
same way, so both build their events here from the same records.
"""

from __future__ import annotations

from typing import Any

from ..records import RESULT_KINDS, ErrorInfo, ExecutionRecord, ExecutionStatus, StepKind, StepRecord, utcnow
from ._models import (
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionEvent,
    ExecutionFailed,
    ExecutionPaused,
    ExecutionResumed,
    ExecutionStarted,
    UnitCompleted,
    UnitEvent,
    UnitFailed,
    UnitReplayed,
    UnitRetried,
    UnitStarted,
)

__all__ = [
    "RESULT_KINDS",
    "attempt_started",
    "execution_ended",
    "run_name",
    "unit_done",
    "unit_failed",
    "unit_retried",
    "unit_started",
]


def run_name(head: ExecutionRecord) -> str | None:
    """The workflow's registered name, else the agent's name."""
    return head.task.workflow or head.task.agent_name


def _tool(kind: StepKind, name: str, key: str, call_id: str | None = None) -> tuple[str | None, str | None]:
    if kind is not StepKind.TOOL_CALL:
        return None, None
    tool = name.removeprefix("tool:")
    if call_id is None:
        # Late import: `perdure.durable` imports this module (its journal emits these events).
        from ..durable._keys import parse_call_key

        for start in range(len(key)):  # keys of nested agent runs carry a `<scope>/` prefix
            if start == 0 or key[start - 1] == "/":
                parsed = parse_call_key(key[start:])
                if parsed is not None:
                    call_id = parsed.tool_call_id
                    break
    return tool, call_id


def _tokens(step: StepRecord) -> tuple[int, int]:
    if step.kind is not StepKind.MODEL_REQUEST or not isinstance(step.result, dict):
        return 0, 0
    usage = step.result.get("usage")
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)


def _unit_fields(head: ExecutionRecord, step: StepRecord) -> dict[str, Any]:
    tool, call_id = _tool(step.kind, step.name, step.key)
    tokens_in, tokens_out = _tokens(step)
    return {
        "execution_id": head.execution_id,
        "name": run_name(head),
        "step_index": step.seq,
        "step_name": step.name,
        "unit_kind": step.kind.value,
        "unit_key": step.key,
        "tool_name": tool,
        "tool_call_id": call_id,
        "attempt": step.attempt,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
    }


def unit_done(head: ExecutionRecord, step: StepRecord, *, replayed: bool) -> UnitEvent:
    """`unit_completed` for a journaled result, `unit_replayed` when the journal answered it."""
    fields = _unit_fields(head, step)
    if replayed:
        return UnitReplayed(**fields, duration=0.0)
    duration = max(0.0, (step.finished_at - step.started_at).total_seconds())
    return UnitCompleted(**fields, duration=duration, at=step.finished_at)


def _live_fields(
    head: ExecutionRecord, kind: StepKind, name: str, key: str, seq: int, attempt: int, call_id: str | None
) -> dict[str, Any]:
    """What a unit running live says about itself (before its result is journaled)."""
    tool, call_id = _tool(kind, name, key, call_id)
    return {
        "execution_id": head.execution_id,
        "name": run_name(head),
        "step_index": seq,
        "step_name": name,
        "unit_kind": kind.value,
        "unit_key": key,
        "tool_name": tool,
        "tool_call_id": call_id,
        "attempt": attempt,
    }


def unit_started(
    head: ExecutionRecord,
    kind: StepKind,
    name: str,
    key: str,
    seq: int,
    attempt: int,
    tool_call_id: str | None = None,
) -> UnitStarted:
    """A unit about to run live at journal position `seq`."""
    return UnitStarted(**_live_fields(head, kind, name, key, seq, attempt, tool_call_id))


def _error_fields(error: ErrorInfo | dict[str, Any] | None) -> dict[str, Any]:
    if error is None:
        return {}
    if isinstance(error, dict):
        return {"error_type": error.get("type"), "error_message": error.get("message")}
    return {"error_type": error.type, "error_message": error.message}


def unit_failed(
    head: ExecutionRecord,
    kind: StepKind,
    name: str,
    key: str,
    seq: int,
    attempt: int,
    error: ErrorInfo,
    duration: float,
    tool_call_id: str | None = None,
) -> UnitFailed:
    """A unit that raised and is not tried again in this attempt."""
    fields = _live_fields(head, kind, name, key, seq, attempt, tool_call_id)
    return UnitFailed(**fields, duration=duration, **_error_fields(error))


def unit_retried(head: ExecutionRecord, entry: StepRecord, unit_kind: StepKind | None = None) -> UnitRetried:
    """A failed try, from its `attempt` journal entry (its result holds attempt, error and delay)."""
    result = entry.result if isinstance(entry.result, dict) else {}
    kind = unit_kind or (StepKind.TOOL_CALL if entry.name.startswith("tool:") else None)
    tool = entry.name.removeprefix("tool:") if kind is StepKind.TOOL_CALL else None
    from ..durable._keys import attempt_unit  # late: `perdure.durable` imports this module

    return UnitRetried(
        execution_id=head.execution_id,
        name=run_name(head),
        step_index=entry.seq,
        step_name=entry.name,
        unit_kind=kind.value if kind is not None else None,
        unit_key=attempt_unit(entry.key),
        tool_name=tool,
        attempt=int(result.get("attempt") or 0) or None,
        delay=result.get("delay"),
        at=entry.finished_at,
        **_error_fields(result.get("error")),
    )


def _execution_fields(head: ExecutionRecord) -> dict[str, Any]:
    return {
        "execution_id": head.execution_id,
        "name": run_name(head),
        "status": head.status.value,
        "attempt": head.attempts,
        "step_index": head.step_index,
        "step_name": head.step_name or None,
        "input_tokens": head.usage.input_tokens,
        "output_tokens": head.usage.output_tokens,
        "requests": head.usage.requests,
        "tool_calls": head.usage.tool_calls,
    }


def attempt_started(head: ExecutionRecord) -> ExecutionEvent:
    """`execution_started` for the first attempt, `execution_resumed` for a later one."""
    fields = _execution_fields(head)
    return ExecutionStarted(**fields) if head.attempts <= 1 else ExecutionResumed(**fields)


_ENDS: dict[ExecutionStatus, type[ExecutionEvent]] = {
    ExecutionStatus.PAUSED: ExecutionPaused,
    ExecutionStatus.FAILED: ExecutionFailed,
    ExecutionStatus.COMPLETED: ExecutionCompleted,
    ExecutionStatus.CANCELLED: ExecutionCancelled,
}


def execution_ended(head: ExecutionRecord) -> ExecutionEvent | None:
    """The event of a head stored with an end status; None for `success` (still running or crashed)."""
    cls = _ENDS.get(head.status)
    if cls is None:
        return None
    fields = _execution_fields(head) | _error_fields(head.error) | {"at": head.updated_at or utcnow()}
    if cls is ExecutionPaused and head.pending is not None:
        fields["pending_kind"] = head.pending.kind
        fields["pending_calls"] = [
            {"tool_call_id": call.tool_call_id, "tool_name": call.tool_name} for call in head.pending.calls
        ]
    return cls(**fields)
