"""DBOS workflow status as perdure's run states and info dicts (what maps, and how).

| DBOS status | perdure status |
|---|---|
| `PENDING` (with the `perdure.status` event `paused`) | `paused`, `pending` = the calls waiting |
| `PENDING`, `ENQUEUED`, `DELAYED` | `success` (in progress, or interrupted until a worker recovers it) |
| `SUCCESS` | `completed` |
| `ERROR`, `MAX_RECOVERY_ATTEMPTS_EXCEEDED` | `failed` |
| `CANCELLED` | `cancelled` |
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import ExecutionCancelledError
from ..records import ExecutionStatus, PendingCall
from ._base import EngineRun
from ._dbos_serializer import RecordedStepError

if TYPE_CHECKING:
    from dbos._sys_db import WorkflowStatus

__all__ = ["SETTLED", "STATUS_FILTER", "TERMINAL", "needs_event", "to_info", "to_run"]

TERMINAL = {
    "SUCCESS": ExecutionStatus.COMPLETED,
    "ERROR": ExecutionStatus.FAILED,
    "MAX_RECOVERY_ATTEMPTS_EXCEEDED": ExecutionStatus.FAILED,
    "CANCELLED": ExecutionStatus.CANCELLED,
}
SETTLED = {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
STATUS_FILTER = {
    ExecutionStatus.COMPLETED: ["SUCCESS"],
    ExecutionStatus.FAILED: ["ERROR", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"],
    ExecutionStatus.CANCELLED: ["CANCELLED"],
    ExecutionStatus.SUCCESS: ["PENDING", "ENQUEUED", "DELAYED"],
    ExecutionStatus.PAUSED: ["PENDING"],
}


def _iso(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat()


def _one_line(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def needs_event(status: WorkflowStatus) -> bool:
    """Only a workflow that has not ended can be paused: its `perdure.status` event tells."""
    return status.status not in TERMINAL


def to_run(status: WorkflowStatus, event: dict[str, Any] | None, engine: str) -> EngineRun[Any]:
    """The `EngineRun` of a workflow status and its latest `perdure.status` event."""
    execution_id = status.workflow_id
    state = TERMINAL.get(status.status)
    pending: list[PendingCall] = []
    if state is None:
        paused = event is not None and event.get("status") == "paused"
        state = ExecutionStatus.PAUSED if paused else ExecutionStatus.SUCCESS
        if paused and event is not None:
            pending = [PendingCall(**item) for item in event.get("pending", [])]
    output = status.output if isinstance(status.output, dict) else {}
    error = _one_line(status.error)
    if state is ExecutionStatus.CANCELLED:
        error = str(ExecutionCancelledError(execution_id, "cancelled through DBOS"))
    info = {
        "workflow_name": status.name,
        "dbos_status": status.status,
        "app_version": status.app_version,
        "executor_id": status.executor_id,
        "approval_round": (event or {}).get("round", output.get("approval_rounds", 0)),
        "usage": output.get("usage"),
    }
    return EngineRun(
        execution_id=execution_id,
        engine=engine,
        status=state,
        output=output.get("output") if state is ExecutionStatus.COMPLETED else None,
        pending=pending,
        error=error,
        info=info,
    )


def _error_details(error: BaseException | None) -> dict[str, Any] | None:
    if error is None:
        return None
    kind = error.type_name if isinstance(error, RecordedStepError) else type(error).__name__
    return {"type": kind, "message": str(error), "traceback": None}  # DBOS keeps no traceback


def to_info(
    status: WorkflowStatus, run: EngineRun[Any], steps: list[Any] | None, engine: str
) -> dict[str, Any]:
    """The info dict `ExecutionRecord.info()` gives for an embedded run, filled from DBOS.

    `steps` (DBOS's recorded steps, None when not read) gives `step_index` / `step_name`; `attempts`
    is DBOS's recovery attempt count; `replay`, `saved`, `task`, `identity`, leases and checkpoints
    have no DBOS counterpart and are left out.
    """
    inputs: dict[str, Any] = dict(status.input or {})
    args = inputs.get("args") or ()
    step_index, step_name = -1, ""
    if steps:
        step_index = len(steps) - 1
        step_name = str(steps[-1].get("function_name", ""))
    updated = _iso(status.updated_at)
    return {
        "execution_id": run.execution_id,
        "engine": engine,
        "status": run.status.value,
        "step_index": step_index,
        "step_name": step_name,
        "error": run.error,
        "error_details": _error_details(status.error),
        "created_at": _iso(status.created_at),
        "updated_at": updated,
        "timestamp": updated,
        "output": run.output,
        "pending": {
            "kind": "approval",
            "calls": [call.model_dump(mode="json") for call in run.pending],
            "round": run.info["approval_round"],
        }
        if run.paused
        else None,
        "attempts": getattr(status, "recovery_attempts", None),
        "usage": run.info.get("usage"),
        "metadata": {
            "agent": args[0] if args else None,
            "workflow_name": status.name,
            "dbos_status": status.status,
            "app_version": status.app_version,
            "executor_id": status.executor_id,
            "queue_name": status.queue_name,
            "forked_from": status.forked_from,
        },
    }
