"""Threads of one execution attempt: sync tools run here, and the engine knows when one still runs.

pydantic-ai runs sync functions (sync tools, sync instructions) in worker threads. A thread cannot be
interrupted: cancelling the coroutine that awaits it (a worker's SIGTERM grace period ending, a
recovery `timeout=`) abandons the thread, which goes on and performs its side effect later. If the
engine then released the lease, another worker would take the execution over and run the same tool
again: the effect would happen twice. So every attempt runs pydantic-ai's sync functions through an
`AttemptThreads` executor (pydantic-ai's public `Agent.using_thread_executor`), and a unit that is
cancelled while its thread still runs waits for the thread, journals its result, and only then lets
the cancellation through: the heartbeat keeps the lease alive meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["AttemptThreads"]

T = TypeVar("T")

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_POOL_SIZE = 40
"""Like anyio's default thread limiter, which pydantic-ai uses outside durable runs."""


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=_POOL_SIZE, thread_name_prefix="perdure-unit")
        return _POOL


class AttemptThreads(Executor):
    """An executor over a shared pool that tracks which of its calls are still running."""

    def __init__(self) -> None:
        self._running: set[Future[Any]] = set()
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run `fn` in the shared pool and remember it until it returns."""
        future = _pool().submit(fn, *args, **kwargs)
        with self._lock:
            self._running.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[Any]) -> None:
        with self._lock:
            self._running.discard(future)

    @property
    def busy(self) -> bool:
        """Whether a call of this attempt is still running in a thread."""
        with self._lock:
            return bool(self._running)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """The pool is shared by every attempt; nothing to shut down per attempt."""
