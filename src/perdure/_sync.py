"""Run coroutines from synchronous code, including code called from inside a running event loop.

The seed API has sync twins (`get_stats()`, `agent.do()`, ...) that users call from scripts, from
Jupyter (a loop is already running) and from async frameworks. `asyncio.run` refuses to nest, so
when a loop is running in this thread the coroutine runs to completion on a helper thread with its
own loop, and the caller blocks until it is done.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")

_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
    return loop


def _run_here(coro: Coroutine[Any, Any, T]) -> T:
    # One long-lived loop per thread: cheaper than asyncio.run per call, and clients bound to a
    # loop (redis asyncio, psycopg pools) keep working across sync calls from the same thread.
    return _thread_loop().run_until_complete(coro)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion and return its result, whether or not a loop runs in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(coro)
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="perdure-sync")
    return _pool.submit(_run_here, coro).result()
