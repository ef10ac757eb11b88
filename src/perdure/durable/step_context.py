"""The durable unit running right now, as a tool sees it: `current_step()` and `idempotency_key(ctx)`.

The journal (`perdure.durable.journal`) sets the context variable around each unit it runs live,
with the attempt number of each try; tools read it to get a key that external APIs can use to
deduplicate effects across retries and resumes.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from pydantic_ai import RunContext

from ..errors import UserError

__all__ = ["STEP", "StepContext", "current_step", "idempotency_key"]


@dataclass(frozen=True)
class StepContext:
    """The durable unit running right now, as seen from inside a tool (or model request)."""

    execution_id: str
    key: str
    """Replay key of the unit, stable across resumes (`tool:<m>/<tool_call_id>` for tool calls, see
    `perdure.durable._keys`)."""
    name: str
    """`tool:<name>`, `model_request`, ..."""
    attempt: int
    """1 for the first try; retries (also those of crashed processes) count up from the journal."""
    tool_call_id: str | None = None

    @property
    def idempotency_key(self) -> str:
        """A key to pass to external APIs that deduplicate requests (payments, emails, queues).

        It is the same on every retry and every resume of this unit, and different for every other
        unit, so an API that honours idempotency keys applies the effect once even when the
        unit runs again after a crash between the effect and its journal write.
        """
        return f"{self.execution_id}:{self.key}"


STEP: ContextVar[StepContext | None] = ContextVar("perdure_current_step", default=None)
"""The unit running in this context; set by the journal around each live unit."""


def current_step() -> StepContext:
    """The unit running in this context; call it inside a tool of a durable execution.

    Raises:
        UserError: Called outside a durable unit (e.g. a tool run by a plain, non-durable agent).

    """
    step = STEP.get()
    if step is None:
        raise UserError(
            "perdure.current_step() is only available inside a tool or model request of a durable "
            "execution (run the agent through perdure's Agent or DurableExecution.run_agent)."
        )
    return step


def idempotency_key(ctx: RunContext[Any]) -> str:
    """The idempotency key of the tool call `ctx` belongs to (same value as `current_step()`'s).

    The key is `<execution id>:tool:<m>/<tool_call_id>` (`m`: the ordinal of the model response
    that asked for the call), stable across retries and resumes and unique per call.
    """
    step = STEP.get()
    if not ctx.run_id or not ctx.tool_call_id or step is None or step.tool_call_id != ctx.tool_call_id:
        raise UserError(
            "idempotency_key(ctx) needs the RunContext of a tool call inside a durable execution."
        )
    return step.idempotency_key
