"""A client per event loop, each closed on its own loop: shared by the Redis and PostgreSQL backends.

Why a module of its own: redis-py's asyncio clients and psycopg's async pools belong to the event
loop that opened them, while the sync twins run each thread's coroutines on that thread's own loop
(see `perdure._sync`). So a server backend keeps one client per loop, and has to close every client
on the loop it belongs to, whichever state that loop is in: the running one (await the close), a
live loop of another thread (schedule the close there, never wait for it: that loop may be blocked
in the sync twin waiting for us), a loop whose thread ended (nothing will run it again: drive it on a
helper thread until the close is done), or a closed loop (drop the sockets without it). These rules
are the same for both backends and easy to get subtly wrong, so they live here once; a backend only
says how to make its client and how to close it (`LoopClient`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol, TypeVar

__all__ = ["LoopClient", "PerLoop", "Slot"]

logger = logging.getLogger("perdure.storage")

_CLOSING: set[asyncio.Task[None]] = set()  # strong refs: the loop only keeps weak ones
_POLL = 0.005


class LoopClient(Protocol):
    """What a backend keeps per event loop."""

    async def aclose(self) -> None:
        """Close the client; runs on the client's own loop."""

    def abandon(self) -> None:
        """Drop the client's sockets without its loop (called only when no thread can run that loop)."""


C = TypeVar("C", bound=LoopClient)


@dataclass(eq=False)
class Slot(Generic[C]):
    """A client, the loop it belongs to and the thread that created it."""

    loop: asyncio.AbstractEventLoop
    client: C
    thread: threading.Thread = field(default_factory=threading.current_thread)

    @property
    def orphaned(self) -> bool:
        """The loop can never run again by itself: it is closed, or idle and its thread has ended."""
        return self.loop.is_closed() or (not self.loop.is_running() and not self.thread.is_alive())

    def close_elsewhere(self) -> threading.Thread | None:
        """Close the client from another loop's thread, never waiting for its loop (it may wait for us).

        An orphaned loop is driven to completion of the close on a helper thread (returned, to join);
        a live loop gets the close scheduled and runs it when it regains control.
        """
        if self.loop.is_closed():
            self.client.abandon()
            return None
        if self.orphaned:
            helper = threading.Thread(target=self._drain, name="perdure-loop-close", daemon=True)
            helper.start()
            return helper
        if not self.loop.is_running() and self.thread is threading.current_thread():
            # Idle, and only this thread could start it: free the server's slots now. Another live
            # thread's loop keeps its sockets until it runs the close (never race a loop's thread).
            self.client.abandon()
        with contextlib.suppress(RuntimeError):  # closed in the meantime
            self.loop.call_soon_threadsafe(_spawn_close, self.client)
        return None

    def _drain(self) -> None:
        try:
            self.loop.run_until_complete(self.client.aclose())
        except Exception:  # e.g. someone started the loop again meanwhile: it will close it then
            logger.debug("could not close the client of an orphaned event loop", exc_info=True)
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(_spawn_close, self.client)


def _spawn_close(client: LoopClient) -> None:
    """Run in the client's own loop: close it in the background."""
    task = asyncio.get_running_loop().create_task(client.aclose())
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


class Got(NamedTuple, Generic[C]):
    """What `PerLoop.get` found: this loop's client, whether it was just made, and the orphans it reaped."""

    client: C
    created: bool
    orphans: list[Slot[C]]


class PerLoop(Generic[C]):
    """The clients of one storage, by event loop (thread-safe).

    It holds no reference to the storage, so a storage's finalizer may call `release_all`.
    """

    def __init__(self) -> None:
        self.slots: dict[asyncio.AbstractEventLoop, Slot[C]] = {}
        self._lock = threading.Lock()

    def get(self, make: Callable[[], C]) -> Got[C]:
        """The running loop's client, made with `make` on first use (a client cannot move between loops).

        Making one also takes out the clients of orphaned loops (closed ones, and idle loops of threads
        that ended: sync twins called from short-lived threads leave one loop per thread behind), for
        the caller to close with `close` or `release`, or a long-running process would pile up
        server connections.
        """
        loop = asyncio.get_running_loop()
        slot = self.slots.get(loop)
        if slot is not None:
            return Got(slot.client, False, [])
        with self._lock:
            slot = self.slots.get(loop)
            if slot is not None:
                return Got(slot.client, False, [])
            slot = self.slots[loop] = Slot(loop, make())
            orphans = [s for s in self.slots.values() if s.orphaned]
            for orphan in orphans:
                del self.slots[orphan.loop]
        return Got(slot.client, True, orphans)

    def pop(self) -> Slot[C] | None:
        """Take the running loop's client out (to close it and start afresh)."""
        with self._lock:
            return self.slots.pop(asyncio.get_running_loop(), None)

    def take_all(self) -> list[Slot[C]]:
        """Take every client out; the dict is cleared in place."""
        with self._lock:
            slots = list(self.slots.values())
            self.slots.clear()
        return slots

    def release_all(self) -> None:
        """Close every client without waiting (a storage's finalizer cannot await)."""
        release(self.take_all())


def release(slots: Iterable[Slot[C]]) -> None:
    """Close clients of other loops without waiting for them."""
    for slot in slots:
        slot.close_elsewhere()


async def close(slots: Iterable[Slot[C]], *, wait: float) -> None:
    """Close clients: the running loop's here, the others on their loops (see `Slot.close_elsewhere`).

    Waits up to `wait` seconds for the helper threads that close orphaned loops' clients, polling so
    that this loop keeps running meanwhile; live loops' closes are only scheduled.
    """
    here = asyncio.get_running_loop()
    helpers = []
    for slot in slots:
        if slot.loop is here:
            await slot.client.aclose()
        elif (helper := slot.close_elsewhere()) is not None:
            helpers.append(helper)
    deadline = time.monotonic() + wait
    while any(h.is_alive() for h in helpers) and time.monotonic() < deadline:
        await asyncio.sleep(_POLL)
