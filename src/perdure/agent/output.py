"""`AgentRunOutput`: what `do(..., return_output=True)` and `continue_run(...)` report about a run.

The seed API returns a run object instead of the bare output when asked (`return_output=True`) and
leaves one on the agent (`agent._agent_run_output`) even when the run raised, so the caller can
recover with its `run_id`. Here that object is a snapshot of the execution's head record after the
call: the id, status, output, usage, replay savings, and what a paused run waits for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic_ai.tools import DeferredToolRequests
from pydantic_ai.usage import RunUsage

from ..records import ErrorInfo, ExecutionRecord, ExecutionStatus, PendingDecision, ReplayStats, UsageTotals

__all__ = ["AgentRunOutput"]


@dataclass
class AgentRunOutput:
    """The outcome of one `do` / `continue_run` call, successful or not.

    Attributes:
        run_id: The durable execution id (`task.durable_execution_id`); pass it to
            `continue_run(run_id=...)` from any process. None for a task that is not durable.
        output: The agent's output when `completed`; pydantic-ai's `DeferredToolRequests` when the
            run `paused` for approvals; None after an error.
        status: `completed`, `paused`, `failed`, `cancelled` (or `success`: interrupted mid-run).
        usage: Model requests, tokens and tool calls of the whole execution, counted once each
            (replayed steps are not counted again).
        replay: What the latest attempt took from the journal instead of paying for it again.
        pending: What a `paused` execution waits for: approvals (`kind="approval"`) or a decision
            about an interrupted non-idempotent call (`kind="non_idempotent"`), with each call's id,
            tool name and arguments. (The message history a pause continues from stays in storage.)
        error: The error of a `failed` (or non-idempotent-`paused`) run.
        attempts: Attempts this call made: 1, plus one per internal resume under `Agent(retry=N)`;
            0 when the run had already completed and its stored output was returned.
        metadata: The execution's metadata (e.g. `session_id` / `user_id` from `SqliteDatabase`).

    """

    run_id: str | None
    output: Any = None
    status: ExecutionStatus = ExecutionStatus.COMPLETED
    usage: UsageTotals = field(default_factory=UsageTotals)
    replay: ReplayStats = field(default_factory=ReplayStats)
    pending: PendingDecision | None = None
    error: ErrorInfo | None = None
    attempts: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def execution_id(self) -> str | None:
        """Alias of `run_id` (perdure's name for it)."""
        return self.run_id

    @property
    def session_id(self) -> str | None:
        """The session the run belongs to, when it was started through a database."""
        value = self.metadata.get("session_id")
        return value if isinstance(value, str) else None

    @property
    def user_id(self) -> str | None:
        """The user the run belongs to, when it was started through a database."""
        value = self.metadata.get("user_id")
        return value if isinstance(value, str) else None

    @property
    def completed(self) -> bool:
        """The run finished and `output` is its final output."""
        return self.status is ExecutionStatus.COMPLETED

    @property
    def paused(self) -> bool:
        """The run waits for a human decision; see `pending`."""
        return self.status is ExecutionStatus.PAUSED

    @property
    def failed(self) -> bool:
        """The run raised; `error` says why. `continue_run(run_id=...)` resumes it."""
        return self.status is ExecutionStatus.FAILED

    # Seed (Upsonic) spellings of the same facts.

    @property
    def is_complete(self) -> bool:
        """Seed spelling of `completed`."""
        return self.completed

    @property
    def is_paused(self) -> bool:
        """Seed spelling of `paused`."""
        return self.paused

    @property
    def is_error(self) -> bool:
        """Whether the run ended in an error (`failed`, or `error` set on any status)."""
        return self.failed or self.error is not None

    @property
    def error_details(self) -> dict[str, Any] | None:
        """The error as a dict (`type`, `message`, `traceback`), None without one (seed spelling)."""
        return self.error.model_dump(mode="json") if self.error is not None else None

    @property
    def pause_reason(self) -> str | None:
        """Why a paused run waits: `approval` or `non_idempotent` (None unless paused)."""
        return self.pending.kind if self.paused and self.pending is not None else None

    @property
    def deferred(self) -> DeferredToolRequests | None:
        """The calls waiting for approval, as pydantic-ai reports them (None unless paused for that)."""
        return self.output if isinstance(self.output, DeferredToolRequests) else None

    @classmethod
    def from_head(cls, head: ExecutionRecord, output: Any, *, attempts: int) -> AgentRunOutput:
        """The output object of a durable run whose head record is `head`."""
        return cls(
            run_id=head.execution_id,
            output=output,
            status=head.status,
            usage=head.usage,
            replay=head.replay,
            pending=_public_pending(head),
            error=head.error,
            attempts=attempts,
            metadata=dict(head.metadata),
        )

    @classmethod
    def from_plain_run(cls, output: Any, usage: RunUsage) -> AgentRunOutput:
        """The output object of a run without durable execution (no id, nothing to resume)."""
        totals = UsageTotals(
            requests=usage.requests,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            tool_calls=usage.tool_calls,
        )
        return cls(run_id=None, output=output, usage=totals)

    @classmethod
    def from_error(
        cls, run_id: str | None, exc: BaseException, head: ExecutionRecord | None, *, attempts: int
    ) -> AgentRunOutput:
        """The output object left on the agent when a call raised `exc`.

        `head` is the execution's record after the failure when it could be read; without it (the
        storage may be what failed) the object still carries the `run_id` to resume with.
        """
        if head is not None:
            result = cls.from_head(head, None, attempts=attempts)
            if result.error is None:
                result.error = ErrorInfo.from_exception(exc)
            return result
        return cls(
            run_id=run_id,
            status=ExecutionStatus.FAILED,
            error=ErrorInfo.from_exception(exc),
            attempts=attempts,
        )

    def __repr__(self) -> str:
        text = repr(self.output)
        if len(text) > 80:
            text = text[:77] + "..."
        return (
            f"AgentRunOutput(run_id={self.run_id!r}, status={self.status.value!r}, output={text}, "
            f"requests={self.usage.requests}, replayed_model_requests={self.replay.replayed_model_requests})"
        )


def _public_pending(head: ExecutionRecord) -> PendingDecision | None:
    """The head's pending decision without the stored message history (bulky, internal)."""
    if head.status is not ExecutionStatus.PAUSED or head.pending is None:
        return None
    return head.pending.model_copy(update={"messages": None})
