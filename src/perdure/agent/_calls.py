"""One public call of the facade: its bookkeeping, its attempts, and a completed run's stored output.

`Agent(retry=N)` lets one `do` / `continue_*` call make up to N attempts, each further one a resume
from the journal; a failure must still report the run id and the attempts made, so the caller can
recover. Both the running and the resuming entry points need exactly this, so it lives here once,
apart from the agent: nothing in it depends on the agent beyond its `retry` count.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic_ai.exceptions import UnexpectedModelBehavior, UsageLimitExceeded
from pydantic_ai.exceptions import UserError as PydanticAIUserError

from ..durable.engine import AgentFactory, AttemptResult
from ..durable.execution import DurableExecution
from ..errors import PerdureError
from ..records import ExecutionRecord
from ..storage.base import DurableExecutionStorage

__all__ = ["NOT_RESUMABLE", "Call", "load_output", "run_attempts"]

logger = logging.getLogger("perdure")

NOT_RESUMABLE: tuple[type[BaseException], ...] = (
    PerdureError,  # misuse, corruption, a pause or a mismatch: resuming again cannot help
    PydanticAIUserError,  # misconfiguration
    UsageLimitExceeded,  # the replayed usage reaches the same limit again
    UnexpectedModelBehavior,  # raised while handling a journaled response: a replay repeats it
)
"""Errors raised at once by `run_attempts`: another attempt would fail the same way."""


@dataclass
class Call:
    """Bookkeeping of one public call, so a failure can still report the run id and attempts."""

    run_id: str | None = None
    storage: DurableExecutionStorage | None = None
    attempts: int = 0


async def run_attempts(
    durable: DurableExecution,
    call: Call,
    factory: AgentFactory,
    first: Callable[[], Awaitable[AttemptResult[Any]]],
    *,
    retry: int,
) -> AttemptResult[Any]:
    """Run `first`; on failure resume from the journal until `retry` attempts were made.

    A further attempt never restarts the task: it replays the journal, so finished model requests
    and tool calls are not paid for or executed again. Decisions passed to `first` were journaled
    by it, so later attempts resume without them.
    """
    while True:
        call.attempts += 1
        try:
            if call.attempts == 1:
                return await first()
            return await durable.execute_async(factory)
        except Exception as exc:
            if call.attempts >= retry or isinstance(exc, NOT_RESUMABLE):
                raise
            logger.warning(
                "[%s] attempt %d of %d failed (%s: %s); resuming from the journal",
                durable.execution_id,
                call.attempts,
                retry,
                type(exc).__name__,
                exc,
            )


def load_output(head: ExecutionRecord, response_format: Any) -> Any:
    """The stored output of a completed execution, validated as `response_format` when one is given."""
    if response_format is None or head.output is None:
        return head.output
    from pydantic import TypeAdapter

    return TypeAdapter(response_format).validate_python(head.output)
