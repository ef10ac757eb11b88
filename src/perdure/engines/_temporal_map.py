"""Translations between perdure's vocabulary and Temporal's: retry policies, timeouts, statuses, info dicts.

Kept apart from the client so each mapping is stated once, with what does not map next to it.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta
from typing import Any

from pydantic_ai.usage import UsageLimits
from temporalio.client import WorkflowExecution, WorkflowExecutionStatus
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.workflow import ActivityConfig

from ..durable.retry import RetryPolicy
from ..errors import UserError
from ..records import ExecutionStatus
from ._base import Engine, EngineOptions
from ._temporal_workflow import MEMO_KEY, AgentRunInput, RunMemo

__all__ = [
    "activity_configs",
    "error_text",
    "execution_info",
    "perdure_status",
    "retry_policy",
    "run_input",
    "run_memo",
    "status_query",
]

logger = logging.getLogger("perdure.engines.temporal")


RUN_KWARGS = ("model", "model_settings", "usage_limits")
"""The `agent.run` arguments that cross to the worker (as JSON)."""


def run_input(agent: str, prompt: str, execution_id: str, run_kwargs: dict[str, Any]) -> AgentRunInput:
    """The workflow input for a run; only JSON-serializable run arguments can reach the worker."""
    unknown = sorted(set(run_kwargs) - set(RUN_KWARGS))
    if unknown:
        raise UserError(
            f"The temporal engine passes only {', '.join(RUN_KWARGS)} to the agent run; got "
            f"{', '.join(unknown)} (execution {execution_id}). deps and message_history cannot cross to "
            f"the worker: build them in tools or the agent itself."
        )
    limits = run_kwargs.get("usage_limits")
    if isinstance(limits, UsageLimits):
        limits = {k: v for k, v in dataclasses.asdict(limits).items() if v is not None}
    model = run_kwargs.get("model")
    if model is not None and not isinstance(model, str):
        raise UserError(
            f"model= must be a key of PerdureDurability(models=...) or a model-name string on the "
            f"temporal engine, got {type(model).__name__} (execution {execution_id})."
        )
    return AgentRunInput(
        agent=agent,
        prompt=prompt,
        model=model,
        model_settings=run_kwargs.get("model_settings"),
        usage_limits=limits,
    )


def retry_policy(policy: RetryPolicy) -> TemporalRetryPolicy:
    """Map perdure's `RetryPolicy` onto Temporal's activity retry policy.

    Maps: `max_retries + 1` attempts, `retry_delay` (first interval), exponential back-off (coefficient
    2, else 1), `max_delay` (maximum interval). Does not map: `jitter` (Temporal has none of its own),
    `retry_on_errors` (Temporal lists non-retryable errors instead) and perdure's transient-error
    classification (Temporal retries every error not marked non-retryable).
    """
    if policy.retry_on_errors is not None:
        logger.warning(
            "RetryPolicy(retry_on_errors=...) does not map onto Temporal, which retries every error not "
            "marked non-retryable; it is ignored on the temporal engine."
        )
    first = timedelta(seconds=max(policy.retry_delay, 0.001))
    return TemporalRetryPolicy(
        initial_interval=first,
        backoff_coefficient=2.0 if policy.exponential_backoff else 1.0,
        maximum_interval=max(timedelta(seconds=policy.max_delay), first),
        maximum_attempts=policy.max_retries + 1,
    )


def activity_configs(
    options: EngineOptions, retry: RetryPolicy | None, tool_retry: RetryPolicy | None
) -> tuple[ActivityConfig, ActivityConfig]:
    """The base (tool) and model activity configs of `TemporalDurability` for these options and policies."""
    timeout = options.temporal_activity_timeout or 60.0
    heartbeat = options.temporal_heartbeat_timeout
    base = ActivityConfig(start_to_close_timeout=timedelta(seconds=timeout))
    model = ActivityConfig()
    if heartbeat is not None:
        base["heartbeat_timeout"] = timedelta(seconds=heartbeat)
        model["heartbeat_timeout"] = timedelta(seconds=heartbeat)
    if tool_retry is not None:
        base["retry_policy"] = retry_policy(tool_retry)
    if retry is not None:
        model["retry_policy"] = retry_policy(retry)
    elif tool_retry is not None:
        model["retry_policy"] = TemporalRetryPolicy()  # the tools' policy is not the models'
    return base, model


_STATUSES = {
    WorkflowExecutionStatus.RUNNING: ExecutionStatus.SUCCESS,
    WorkflowExecutionStatus.CONTINUED_AS_NEW: ExecutionStatus.SUCCESS,
    WorkflowExecutionStatus.COMPLETED: ExecutionStatus.COMPLETED,
    WorkflowExecutionStatus.FAILED: ExecutionStatus.FAILED,
    WorkflowExecutionStatus.TIMED_OUT: ExecutionStatus.FAILED,
    WorkflowExecutionStatus.TERMINATED: ExecutionStatus.FAILED,
    WorkflowExecutionStatus.CANCELED: ExecutionStatus.CANCELLED,
}


def perdure_status(status: WorkflowExecutionStatus | None, memo: RunMemo | None) -> ExecutionStatus:
    """The perdure status of a workflow: Temporal's status, with `paused` read from the memo."""
    mapped = _STATUSES.get(status) if status is not None else None
    mapped = mapped or ExecutionStatus.SUCCESS
    if mapped is ExecutionStatus.SUCCESS and memo is not None and memo.status == "paused":
        return ExecutionStatus.PAUSED
    return mapped


def status_query(status: str | None) -> tuple[str, str | None]:
    """Temporal visibility filter for a perdure status, and the memo status still to check."""
    if status is None:
        return "", None
    try:
        wanted = ExecutionStatus(status)
    except ValueError:
        raise UserError(
            f"Unknown status {status!r}: choose one of {', '.join(s.value for s in ExecutionStatus)}."
        ) from None
    if wanted is ExecutionStatus.COMPLETED:
        return " AND ExecutionStatus = 'Completed'", None
    if wanted is ExecutionStatus.FAILED:
        return " AND ExecutionStatus IN ('Failed', 'TimedOut', 'Terminated')", None
    if wanted is ExecutionStatus.CANCELLED:
        return " AND ExecutionStatus = 'Canceled'", None
    return " AND ExecutionStatus = 'Running'", ("paused" if wanted is ExecutionStatus.PAUSED else "running")


async def run_memo(execution: WorkflowExecution) -> RunMemo | None:
    """The perdure memo of a workflow (None for a workflow perdure did not start)."""
    raw = (await execution.memo()).get(MEMO_KEY)
    return RunMemo.model_validate(raw) if isinstance(raw, dict) else None


def error_text(error: BaseException) -> str:
    """One line from a Temporal failure chain: perdure's own failure if any, else the innermost cause."""
    while error.__cause__ is not None and not str(getattr(error, "type", "") or "").startswith("Perdure"):
        error = error.__cause__
    message = getattr(error, "message", None) or str(error)
    kind = getattr(error, "type", None) or type(error).__name__
    return f"{kind}: {message}"


def execution_info(
    execution: WorkflowExecution, memo: RunMemo | None, *, error: str | None = None, output: Any = None
) -> dict[str, Any]:
    """An info dict with `ExecutionRecord.info()`'s keys, filled from Temporal's visibility.

    Not mapped (Temporal keeps no such thing per workflow): `step_index`/`step_name` (-1 / ""; the
    history length is in `metadata`), `usage`, `replay`, `saved`, lease fields, `identity`.
    `updated_at` is the close time, else the last pause/resume, else the start time.
    """
    status = perdure_status(execution.status, memo)
    created = Engine.timestamp(execution.start_time)
    updated = Engine.timestamp(execution.close_time) or (memo.updated_at if memo else None) or created
    pending = None
    if status is ExecutionStatus.PAUSED and memo is not None:
        pending = {
            "kind": "approval",
            "calls": [call.model_dump(mode="json") for call in memo.pending],
            "round": memo.round,
        }
    return {
        "execution_id": execution.id,
        "engine": "temporal",
        "status": status.value,
        "step_index": -1,
        "step_name": "",
        "error": error,
        "error_details": {"type": error.split(":", 1)[0], "message": error} if error else None,
        "created_at": created,
        "updated_at": updated,
        "timestamp": updated,
        "agent_name": memo.agent if memo else None,
        "task": {"agent_name": memo.agent if memo else None},
        "output": output,
        "pending": pending,
        "metadata": {
            "temporal": {
                "run_id": execution.run_id,
                "workflow_type": execution.workflow_type,
                "task_queue": execution.task_queue,
                "status": execution.status.name if execution.status is not None else None,
                "history_length": execution.history_length,
                "namespace": execution.namespace,
            }
        },
    }
