"""`Task`: what to do, with which tools, in which output shape, durably or not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, overload

from typing_extensions import TypeVar

from ..durable.execution import DurableExecution
from ..errors import UserError
from ..records import ExecutionStatus, PendingDecision
from .tools import ToolLike, register_output_type, register_tool

__all__ = ["OutputT", "Task"]

OutputT = TypeVar("OutputT", default=str)
"""The task's output type: its `response_format`, `str` without one."""


class Task(Generic[OutputT]):
    """A unit of work for `Agent.do`, as in the seed API.

    A task carries the id of its durable execution, which is why the seed's
    `agent.continue_run_async(task=task)` can find the run again. In a new process, where the task
    object that ran is gone, build one with `Task(description, durable_execution_id=run_id)` (or use
    `continue_run_async(run_id=...)`); the description alone does not identify a run.

    Args:
        description: The instruction given to the agent (the user prompt).
        tools: Tools available for this task only, in addition to the agent's.
        response_format: A pydantic model (or other type) for typed output; text when omitted.
        durable_execution: Makes the task durable: its id, storage and cleanup policy.
        durable_execution_id: The id of an existing execution this task stands for, resolved in the
            storage of the agent's `db` when no `durable_execution` is given.
        context: JSON data stored with the execution for the application's own use.
        expected_steps: How many units (model requests and tool calls) the task is expected to
            take: the total of `execution_summary`'s completion percentage. None: unknown.

    """

    @overload
    def __init__(
        self: Task[str],
        description: str,
        *,
        tools: Sequence[ToolLike] | None = None,
        response_format: None = None,
        durable_execution: DurableExecution | None = None,
        durable_execution_id: str | None = None,
        context: dict[str, Any] | None = None,
        expected_steps: int | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self: Task[OutputT],
        description: str,
        *,
        tools: Sequence[ToolLike] | None = None,
        response_format: type[OutputT],
        durable_execution: DurableExecution | None = None,
        durable_execution_id: str | None = None,
        context: dict[str, Any] | None = None,
        expected_steps: int | None = None,
    ) -> None: ...
    def __init__(
        self,
        description: str,
        *,
        tools: Sequence[ToolLike] | None = None,
        response_format: Any = None,
        durable_execution: DurableExecution | None = None,
        durable_execution_id: str | None = None,
        context: dict[str, Any] | None = None,
        expected_steps: int | None = None,
    ) -> None:
        if (
            durable_execution is not None
            and durable_execution_id is not None
            and durable_execution.execution_id != durable_execution_id
        ):
            raise UserError(
                f"Task got durable_execution_id={durable_execution_id!r} but its durable_execution has id "
                f"{durable_execution.execution_id!r}; pass one of them."
            )
        self.description = description
        self.tools: list[ToolLike] = list(tools or [])
        for item in self.tools:  # a resume in this process finds them by their recorded names
            register_tool(item)
        if response_format is not None:
            register_output_type(response_format)
        self.response_format = response_format
        self.durable_execution = durable_execution
        self._execution_id = durable_execution_id
        self.context = dict(context or {})
        if expected_steps is not None and (
            isinstance(expected_steps, bool) or not isinstance(expected_steps, int) or expected_steps < 1
        ):
            raise UserError(f"Task(expected_steps=...) must be a positive int, got {expected_steps!r}.")
        self.expected_steps = expected_steps
        self.response: Any = None
        """What the last `do` / `continue_run` returned: the output, or `DeferredToolRequests` when paused."""
        self.status: ExecutionStatus | None = None
        """Status of the task's execution after the last call (None before any)."""
        self.pending: PendingDecision | None = None
        """What the paused execution waits for: the calls needing approval, or an interrupted
        non-idempotent call needing a resolution. None unless `status` is `paused`."""

    @property
    def durable_execution_id(self) -> str | None:
        """Id of the task's durable execution (None for a task that never ran durably)."""
        if self.durable_execution is not None:
            return self.durable_execution.execution_id
        return self._execution_id

    @durable_execution_id.setter
    def durable_execution_id(self, value: str | None) -> None:
        if self.durable_execution is not None:
            if value is None:
                raise UserError(
                    "A task with a durable_execution always has an id; set durable_execution=None."
                )
            self.durable_execution.execution_id = value
        self._execution_id = value

    @property
    def paused(self) -> bool:
        """The task's execution waits for a human decision (see `pending`)."""
        return self.status is ExecutionStatus.PAUSED

    def __repr__(self) -> str:
        status = f", status={self.status.value!r}" if self.status is not None else ""
        return f"Task({self.description[:60]!r}, durable_execution_id={self.durable_execution_id!r}{status})"
