"""Leases from the engine's side: who owns an execution, taking a lease, and keeping it alive.

A lease makes one worker the only writer of an execution (the storage fences every write by it).
This module holds what the engine, recovery and the worker share about leases: owner ids, the
dead-local-owner takeover, the acquisition loop and the heartbeat that renews a lease while any unit
of the execution still runs, threads included.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

from .. import _faults
from ..errors import ExecutionLeasedError, LeaseLostError, StorageUnavailableError
from ..records import ExecutionRecord
from ..storage.base import DurableExecutionStorage

__all__ = ["DEFAULT_LEASE_TTL", "acquire_lease", "default_worker_id", "heartbeat", "owner_is_dead"]

logger = logging.getLogger("perdure")

DEFAULT_LEASE_TTL = 30.0
"""Seconds a lease lasts without renewal; the heartbeat renews it every third of that."""


def default_worker_id() -> str:
    """`host:pid:random`, unique per DurableExecution so two in one process do not share a lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """Whether a lease owner id names a process of this host that no longer exists.

    Such a lease can be taken over at once instead of waiting for it to expire: `kill -9` of a
    worker followed by a resume on the same machine is the common case. Owners on other hosts (or in
    an unknown format) are never judged dead; their leases expire.
    """
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


async def acquire_lease(
    storage: DurableExecutionStorage,
    execution_id: str,
    owner: str,
    ttl: float,
    *,
    wait: float | None = None,
) -> ExecutionRecord:
    """Take the execution's lease (taking over a dead local owner's), waiting up to `wait` seconds."""
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        try:
            return await storage.acquire_lease_async(execution_id, owner, ttl)
        except ExecutionLeasedError as exc:
            if owner_is_dead(exc.owner):
                logger.warning(
                    "[%s] taking over the lease of %s: that process of this host no longer exists",
                    execution_id,
                    exc.owner,
                )
                try:
                    return await storage.acquire_lease_async(execution_id, owner, ttl, steal_from=exc.owner)
                except ExecutionLeasedError:  # someone else took it over first
                    pass
            if deadline is None or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(min(0.25, ttl / 4))


async def heartbeat(
    storage: DurableExecutionStorage,
    execution_id: str,
    owner: str,
    ttl: float,
    on_renewed: Callable[[object], None],
    on_beat: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Renew the lease every third of `ttl` until cancelled, or until it was lost (writes are then fenced).

    `on_beat` runs after each renewal: the engine polls for an operator's cancel request there, so a
    running execution notices `DurableExecution.cancel` within a third of its lease time.
    """
    while True:
        await asyncio.sleep(ttl / 3)
        try:
            _faults.point("lease_renew")
            expires = await storage.renew_lease_async(execution_id, owner, ttl)
            on_renewed(expires)
        except LeaseLostError as exc:
            logger.error("[%s] %s", execution_id, exc)
            return
        except (StorageUnavailableError, OSError) as exc:
            logger.warning("[%s] lease renewal failed, will retry: %s", execution_id, exc)
            continue
        if on_beat is not None:
            try:
                await on_beat()
            except (StorageUnavailableError, OSError) as exc:
                logger.warning("[%s] cancel request poll failed, will retry: %s", execution_id, exc)
