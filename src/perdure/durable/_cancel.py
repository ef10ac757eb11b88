"""Cooperative cancel: an operator stops an execution, at once when idle, at a unit boundary when running.

Why a module of its own: cancelling spans two parties that never talk directly. The operator's side
(`cancel_execution_async`, behind `DurableExecution.cancel` and `perdure cancel`) decides from the
lease: an execution nobody runs is marked `cancelled` right away, under a lease it takes first so no
worker starts it meanwhile; a running one gets a cancel request in the storage
(`request_cancel_async`). The worker's side (`attempt_scope` in `perdure.durable._attempt_end`)
reads that request when an attempt starts and on every lease heartbeat (a third of the lease time),
then the next unit raises `ExecutionCancelledError` instead of starting: the unit that was running
(a sync tool in its thread included) finishes and is journaled first, nothing after it runs, the head
ends `cancelled` with that error, and the request is cleared. Recovery never resumes a cancelled
execution.

The storage's request holds a time and a free-text reason only; who asked is written into that text
(`by <who>: <reason>`) and read back from it by `cancel_error`.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import (
    ExecutionCancelledError,
    ExecutionCompletedError,
    ExecutionLeasedError,
    StorageUnavailableError,
)
from ..records import ExecutionRecord, ExecutionStatus, utcnow
from ..storage.base import DurableExecutionStorage
from .leases import acquire_lease, default_worker_id, owner_is_dead

__all__ = [
    "CancelOutcome",
    "cancel_error",
    "cancel_execution_async",
    "clear_request",
    "default_requester",
    "requested_cancel_async",
]

logger = logging.getLogger("perdure")

_OPERATION_LEASE = 30.0
"""Seconds of the lease an operator's write takes (released right after the write)."""


def default_requester() -> str:
    """`user@host` of this process: who an operator's cancel names when the caller gives nobody."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _request_text(reason: str, requested_by: str) -> str:
    """The reason stored with the request: `by <who>: <reason>` (who asked is part of the text)."""
    if not requested_by:
        return reason
    return f"by {requested_by}: {reason}" if reason else f"by {requested_by}"


def cancel_error(execution_id: str, text: str) -> ExecutionCancelledError:
    """The error of a cancelled execution from a stored request reason (`by <who>: <reason>` or free text)."""
    if text.startswith("by "):
        who, sep, reason = text[3:].partition(": ")
        return ExecutionCancelledError(execution_id, reason if sep else "", who)
    return ExecutionCancelledError(execution_id, text)


async def requested_cancel_async(
    storage: DurableExecutionStorage, execution_id: str
) -> ExecutionCancelledError | None:
    """The error to stop with when an operator asked to cancel `execution_id`, None when nobody did."""
    request = await storage.cancel_request_async(execution_id)
    return None if request is None else cancel_error(execution_id, request.reason)


async def clear_request(storage: DurableExecutionStorage, execution_id: str) -> None:
    """Remove a cancel request that was honoured (or is moot); logged, never raised, on failure."""
    try:
        await storage.clear_cancel_request_async(execution_id)
    except Exception:  # the head already says cancelled; a left-over request changes nothing
        logger.warning("[%s] could not clear the cancel request", execution_id, exc_info=True)


@dataclass(frozen=True)
class CancelOutcome:
    """What `DurableExecution.cancel` did.

    `state` is `"cancelled"` when the execution is cancelled now (it was idle, interrupted, paused or
    failed, or it was running and stopped within `wait`), `"requested"` when it is running and will
    stop at its next unit boundary (its worker polls the request every third of its lease time), or
    `"already_cancelled"`.
    """

    execution_id: str
    state: Literal["cancelled", "requested", "already_cancelled"]
    head: ExecutionRecord | None = None
    """The head after the cancel (None when not read again)."""

    @property
    def cancelled(self) -> bool:
        """Whether the execution is cancelled now (not only requested)."""
        return self.state != "requested"

    def to_json(self) -> dict[str, Any]:
        """JSON data for `--json` and the dashboard."""
        return {
            "execution_id": self.execution_id,
            "state": self.state,
            "status": self.head.status.value if self.head is not None else None,
        }


async def _cancel_unleased(
    storage: DurableExecutionStorage, head: ExecutionRecord, error: ExecutionCancelledError, owner: str
) -> ExecutionRecord:
    """Mark `head` (leased by `owner`, not running) cancelled; refuse a completed one."""
    execution_id = head.execution_id
    if head.status is ExecutionStatus.COMPLETED:
        await clear_request(storage, execution_id)
        raise ExecutionCompletedError(execution_id)
    if head.status is ExecutionStatus.CANCELLED:
        await clear_request(storage, execution_id)
        return head
    cancelled = head.cancelled(error)
    await storage.save_state_async(cancelled)
    await clear_request(storage, execution_id)
    logger.info("[%s] cancelled (not running): %s", execution_id, error)
    return cancelled


async def cancel_execution_async(
    storage: DurableExecutionStorage,
    execution_id: str,
    reason: str = "",
    *,
    requested_by: str | None = None,
    wait: float | None = None,
) -> CancelOutcome:
    """Cancel `execution_id`: at once when nobody runs it, else at the running attempt's next unit boundary.

    Args:
        storage: Where the execution lives.
        execution_id: The execution to cancel.
        reason: Why (stored in the head's error; shown by `perdure show` and the dashboard).
        requested_by: Who asks (default `user@host` of this process).
        wait: Seconds to wait for a running execution to stop (None: do not wait).

    Returns:
        A `CancelOutcome`.

    Raises:
        ExecutionNotFoundError: No such execution.
        ExecutionCompletedError: It completed already (nothing to cancel): a conflict.

    """
    who = default_requester() if requested_by is None else requested_by
    text = _request_text(reason, who)
    error = cancel_error(execution_id, text)
    head = await storage.load_state_async(execution_id)
    if head is None:
        raise storage.not_found_error(execution_id)
    if head.status is ExecutionStatus.COMPLETED:
        raise ExecutionCompletedError(execution_id)
    if head.status is ExecutionStatus.CANCELLED:
        return CancelOutcome(execution_id, "already_cancelled", head)
    owner = default_worker_id()
    for _ in range(3):  # the run may end (and give the lease back) between our two steps
        try:
            leased = await acquire_lease(storage, execution_id, owner, _OPERATION_LEASE)
        except ExecutionLeasedError:
            pass
        else:
            try:
                done = await _cancel_unleased(storage, leased, error, owner)
            finally:
                await _release(storage, execution_id, owner)
            return CancelOutcome(execution_id, "cancelled", done)
        # Running elsewhere: leave a request its worker polls on every heartbeat.
        if not await storage.request_cancel_async(execution_id, text):
            raise storage.not_found_error(execution_id)
        current = await storage.load_state_async(execution_id)
        if current is None:
            raise storage.not_found_error(execution_id)
        if not _leased_now(current):
            continue  # it stopped meanwhile: cancel it here (the request is cleared with it)
        logger.info(
            "[%s] cancel requested; %s stops at its next unit boundary", execution_id, current.lease_owner
        )
        if wait is None:
            return CancelOutcome(execution_id, "requested", current)
        return await _wait_stopped(storage, execution_id, wait, current)
    return CancelOutcome(execution_id, "requested", await storage.load_state_async(execution_id))


def _leased_now(head: ExecutionRecord) -> bool:
    """Whether a live worker holds the lease of `head` (unexpired, and not a dead process of this host)."""
    expires = head.lease_expires_at
    if not head.lease_owner or expires is None or expires <= utcnow():
        return False
    return not owner_is_dead(head.lease_owner)


async def _wait_stopped(
    storage: DurableExecutionStorage, execution_id: str, wait: float, head: ExecutionRecord
) -> CancelOutcome:
    """Poll the head until the running attempt honoured the request (or ended otherwise), up to `wait`."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        await asyncio.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
        current = await storage.load_state_async(execution_id)
        if current is None:
            raise storage.not_found_error(execution_id)
        head = current
        if current.status is ExecutionStatus.CANCELLED:
            return CancelOutcome(execution_id, "cancelled", current)
        if current.status is ExecutionStatus.COMPLETED:
            await clear_request(storage, execution_id)
            raise ExecutionCompletedError(execution_id)
        if not _leased_now(current):  # the attempt ended without a unit boundary: cancel it here
            request = await storage.cancel_request_async(execution_id)
            text = request.reason if request is not None else ""
            return await cancel_execution_async(storage, execution_id, text, requested_by="")
    return CancelOutcome(execution_id, "requested", head)


async def _release(storage: DurableExecutionStorage, execution_id: str, owner: str) -> None:
    try:
        await storage.release_lease_async(execution_id, owner)
    except (StorageUnavailableError, OSError):  # the short lease expires on its own
        logger.warning("[%s] could not release the operator's lease", execution_id, exc_info=True)
