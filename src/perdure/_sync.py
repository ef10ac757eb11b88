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

`sync_twin` derives such a twin from its `*_async` original (signature, overloads and all), so a
signature is written once and the two never drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

__all__ = ["run_sync", "sync_twin"]

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


P = ParamSpec("P")
R = TypeVar("R")
SelfT = TypeVar("SelfT")


def sync_twin(
    method: Callable[Concatenate[SelfT, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[SelfT, P], R]:
    """The blocking twin of the async `method` (named `<name>_async`), for a class body.

    Use it as `do = sync_twin(do_async)`. The twin looks the async method up on the instance at
    each call, as a hand-written `self.do_async(...)` would, so a subclass overriding the async
    method changes its twin too. Its docstring is "Sync twin of `<name>_async`."; to say more, set
    `do.__doc__` in the class body. (`sync_twin` deliberately takes no second argument: with one,
    mypy no longer carries an overloaded method's overloads over to the twin.)

    Args:
        method: The async method; its name must end in `_async`.

    Returns:
        A function with `method`'s parameters that returns what `method`'s coroutine returns.

    """
    async_name = method.__name__
    name = async_name.removesuffix("_async")
    if name == async_name:
        raise ValueError(f"sync_twin needs a method named '<name>_async', got {async_name!r}.")

    @functools.wraps(method)  # keeps the async signature for `help()` and `inspect.signature`
    def twin(self: SelfT, /, *args: P.args, **kwargs: P.kwargs) -> R:
        coro: Coroutine[Any, Any, R] = getattr(self, async_name)(*args, **kwargs)
        return run_sync(coro)

    twin.__name__ = name
    twin.__qualname__ = method.__qualname__.removesuffix("_async")
    twin.__doc__ = f"Sync twin of `{async_name}`."
    return twin
