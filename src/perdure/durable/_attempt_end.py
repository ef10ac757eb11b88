"""How an attempt that raised is recorded and explained.

Why a module of its own: the end of a failed attempt is written to the storage that may be what just
failed, so recording it must never hide the error that ended the run (it is logged instead); and
some of pydantic-ai's errors name an internal cause (an unregistered model instance) that a perdure
user fixes elsewhere, so they are rewritten into a `UserError` saying what to pass.
`attempt_scope` is the one place an attempt runs inside (agent runs and workflows alike): the
journal run is current, the lease heartbeat beats, and how the attempt ended is recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.durable_exec import replay_scope
from pydantic_ai.exceptions import UserError as PydanticAIUserError

from ..errors import (
    ExecutionAborted,
    ExecutionCancelledError,
    IdentityError,
    NonIdempotentReplayError,
    UserError,
)
from ..records import PendingDecision
from ..storage.base import DurableExecutionStorage
from ..telemetry import attempt_span
from ._cancel import clear_request, requested_cancel_async
from .journal import JournalRun, pending_call
from .leases import heartbeat

__all__ = ["attempt_scope", "end_cancelled", "explain_unregistered_model", "record_end"]

logger = logging.getLogger("perdure")


async def record_end(write: Awaitable[Any], execution_id: str) -> None:
    """Await the write of the attempt's end; log (never raise) when the storage fails it."""
    try:
        await write
    except Exception:  # the storage may be what failed; the original error matters more
        logger.exception("[%s] could not record the end of the attempt", execution_id)


def explain_unregistered_model(
    exc: PydanticAIUserError, execution_id: str, kwargs: Mapping[str, Any]
) -> BaseException:
    """pydantic-ai refuses a `model=` instance its durability capability does not know: say what to pass."""
    if "not registered" not in str(exc) or "model" not in str(exc).lower():
        return exc
    model = kwargs.get("model")
    return UserError(
        f"Execution {execution_id!r}: the model passed with run_agent(..., model={model!r}) is not one the "
        f"agent's durability knows, so its requests could not be journaled. Register the instance when you "
        f"create the agent: capabilities=[PerdureDurability(models=[that_model])] (the agent's own model "
        f"is registered already), then pass the same instance again. (pydantic-ai: {exc})",
        execution_id=execution_id,
    )


@asynccontextmanager
async def attempt_scope(
    run: JournalRun,
    storage: DurableExecutionStorage,
    worker_id: str,
    lease_ttl: float,
    *,
    explain: Callable[[Exception], BaseException] | None = None,
) -> AsyncIterator[None]:
    """Run the body as the current attempt of `run`, with its heartbeat, and record how it ended.

    An identity refusal leaves the head as it was (nothing of the attempt ran); an interrupted
    non-idempotent call pauses the execution; an operator's abort cancels it; any other error fails
    it (`explain` may turn the error into a clearer one first). The error is raised again.

    An operator's cancel request (`perdure.durable._cancel`) is read when the attempt starts and on
    every heartbeat; the next unit then raises `ExecutionCancelledError`, which ends the attempt
    `cancelled` and clears the request. An attempt that ends otherwise (an error, an interrupted
    call) while a request is pending ends `cancelled` too: the operator asked it to stop.
    """
    execution_id = run.execution_id

    def renewed(expires: object) -> None:
        run.head.lease_expires_at = expires  # type: ignore[assignment]

    async def poll_cancel() -> None:
        if run.cancel_requested is None:
            run.cancel_requested = await requested_cancel_async(storage, execution_id)

    token = run.activate()
    span = attempt_span(run)  # OpenTelemetry (`perdure.telemetry`); a no-op when off
    run.emit_start()
    beat = asyncio.create_task(heartbeat(storage, execution_id, worker_id, lease_ttl, renewed, poll_cancel))
    try:
        with span, replay_scope(), PydanticAgent.using_thread_executor(run.threads):
            await poll_cancel()  # requested while no worker ran it (or between its two steps)
            if run.cancel_requested is not None:
                raise run.cancel_requested
            yield
    except IdentityError:
        raise  # refused before anything ran: the head stays as it was
    except ExecutionCancelledError as exc:
        await _end_cancelled(run, storage, exc)
        raise
    except NonIdempotentReplayError as exc:
        if run.cancel_requested is not None:
            await _end_cancelled(run, storage, run.cancel_requested)
            raise run.cancel_requested from exc
        pending = PendingDecision(kind="non_idempotent", calls=[pending_call(exc)], round=run.round)
        await record_end(run.mark_paused(pending, exc), execution_id)
        raise
    except ExecutionAborted as exc:
        await record_end(run.mark_cancelled(exc), execution_id)
        await clear_request(storage, execution_id)
        raise
    except Exception as exc:
        if run.cancel_requested is not None:
            logger.warning(
                "[%s] cancelled; the attempt ended with %s: %s", execution_id, type(exc).__name__, exc
            )
            await _end_cancelled(run, storage, run.cancel_requested)
            raise run.cancel_requested from exc
        error = explain(exc) if explain is not None else exc
        await record_end(run.mark_failed(error), execution_id)
        if error is exc:
            raise
        raise error from None
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
        span.end()
        JournalRun.deactivate(token)


async def _end_cancelled(
    run: JournalRun, storage: DurableExecutionStorage, exc: ExecutionCancelledError
) -> None:
    """Record the attempt's end as `cancelled` by the operator's request, then clear the request."""
    await record_end(run.mark_cancelled(exc), run.execution_id)
    await clear_request(storage, run.execution_id)
    logger.info("[%s] %s", run.execution_id, exc)


async def end_cancelled(run: JournalRun, storage: DurableExecutionStorage) -> bool:
    """After an attempt that paused: end it `cancelled` instead when a cancel was requested meanwhile.

    Returns whether it did (the caller then raises `run.cancel_requested`).
    """
    if run.cancel_requested is None:
        return False
    await _end_cancelled(run, storage, run.cancel_requested)
    return True
