"""Run coroutines from synchronous code, including code called from inside a running event loop.

The seed API has sync twins (`get_stats()`, `agent.do()`, ...) that users call from scripts, from
Jupyter (a loop is already running) and from async frameworks. `asyncio.run` refuses to nest, so
when a loop is running in this thread the coroutine runs to completion on a helper thread with its
own loop, and the caller blocks until it is done.

Each thread keeps one loop (3 file descriptors: its selector and self-pipe). A thread that ends
leaves its loop behind, freed only by the cycle collector; so when a thread creates its loop, the
loops of threads that ended are closed (those still owning tasks, e.g. a connection pool's
workers, are left to their owners), which keeps a thread-per-execution process within its
descriptor limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")

_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_loops: dict[threading.Thread, asyncio.AbstractEventLoop] = {}
_loops_lock = threading.Lock()


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
        with _loops_lock:
            ended = [t for t in _loops if not t.is_alive()]
            left = [_loops.pop(t) for t in ended]
            _loops[threading.current_thread()] = loop
        for old in left:
            _retire(old)
    return loop


def _retire(loop: asyncio.AbstractEventLoop) -> None:
    """Close the idle loop of a thread that ended (called where no loop runs)."""
    if loop.is_closed() or loop.is_running() or asyncio.all_tasks(loop):
        return
    with contextlib.suppress(Exception):  # e.g. another thread started running it meanwhile
        loop.run_until_complete(loop.shutdown_asyncgens())  # closes clients tied to the loop
        loop.close()


def _run_here(coro: Coroutine[Any, Any, T]) -> T:
    # One long-lived loop per thread: cheaper than asyncio.run per call, and clients bound to a
    # loop (redis asyncio, psycopg pools) keep working across sync calls from the same thread.
    return _thread_loop().run_until_complete(coro)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion and return its result, whether or not a loop runs in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    if not running:  # outside the `except`: errors must not chain "no running event loop"
        return _run_here(coro)
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="perdure-sync")
    return _pool.submit(_run_here, coro).result()
