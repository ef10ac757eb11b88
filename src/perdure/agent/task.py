"""`Task`: what to do, with which tools, in which output shape, durably or not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..durable.execution import DurableExecution
from .tools import ToolLike

__all__ = ["Task"]


class Task:
    """A unit of work for `Agent.do`, as in the seed API.

    Args:
        description: The instruction given to the agent (the user prompt).
        tools: Tools available for this task only, in addition to the agent's.
        response_format: A pydantic model (or other type) for typed output; text when omitted.
        durable_execution: Makes the task durable: its id, storage and cleanup policy.
        context: JSON data stored with the execution for the application's own use.

    """

    def __init__(
        self,
        description: str,
        *,
        tools: Sequence[ToolLike] | None = None,
        response_format: Any = None,
        durable_execution: DurableExecution | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        self.description = description
        self.tools: list[ToolLike] = list(tools or [])
        self.response_format = response_format
        self.durable_execution = durable_execution
        self.context = dict(context or {})
        self.response: Any = None
        """The output of the last successful run."""

    @property
    def durable_execution_id(self) -> str | None:
        """Id of the task's durable execution (None for a non-durable task)."""
        return self.durable_execution.execution_id if self.durable_execution else None

    def __repr__(self) -> str:
        return f"Task({self.description[:60]!r}, durable_execution_id={self.durable_execution_id!r})"
