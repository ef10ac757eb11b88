"""Delivering events in-process: listeners per execution handle and for the whole process.

Why listeners can never break a run: an event is news about the run, not part of it. A listener
that raises is logged once (with its traceback) and then kept quiet; a listener that returns an
awaitable has it scheduled on the running loop, and its failure is logged the same way. When no
listener is registered, the engine does not even build the event (`Emitter.active`), so events cost
nothing on the hot path of an unobserved run.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any

from ._models import EXECUTION_END_KINDS, Event

__all__ = ["GLOBAL_BUS", "EventBus", "EventStream", "Emitter", "Listener", "add_listener"]

logger = logging.getLogger("perdure")

Listener = Callable[[Event], Any]
"""A callable taking one event; it may be a coroutine function (scheduled, not awaited)."""


class EventBus:
    """Listeners of one scope (an execution handle, or the process): each gets every event emitted."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._complained: set[int] = set()
        self._tasks: set[asyncio.Future[Any]] = set()

    @property
    def active(self) -> bool:
        """Whether any listener is registered."""
        return bool(self._listeners)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Register `listener`; returns the function that unregisters it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def emit(self, event: Event) -> None:
        """Give `event` to every listener; a listener's failure is logged once and never raised."""
        for listener in list(self._listeners):
            try:
                outcome = listener(event)
                if inspect.isawaitable(outcome):
                    task = asyncio.ensure_future(outcome)
                    self._tasks.add(task)
                    task.add_done_callback(functools.partial(self._settled, listener=listener))
            except Exception:
                self._complain(listener, event)

    def _settled(self, task: asyncio.Future[Any], *, listener: Listener) -> None:
        self._tasks.discard(task)
        failed = not task.cancelled() and task.exception() is not None
        if failed and id(listener) not in self._complained:
            self._complained.add(id(listener))
            logger.error(
                "perdure event listener %r failed; further failures of it are not logged",
                listener,
                exc_info=task.exception(),
            )

    def _complain(self, listener: Listener, event: Event) -> None:
        if id(listener) in self._complained:
            return
        self._complained.add(id(listener))
        logger.exception(
            "[%s] perdure event listener %r failed on %s; the run goes on, further failures of this "
            "listener are not logged",
            event.execution_id,
            listener,
            event.kind,
        )


GLOBAL_BUS = EventBus()
"""Listeners of every execution of this process (telemetry, monitors)."""


def add_listener(listener: Listener) -> Callable[[], None]:
    """Receive the events of every execution this process runs; returns the unsubscribe function.

    Example:
        ```python
        stop = perdure.add_listener(lambda event: print(event.kind, event.step_name))
        ...
        stop()
        ```

    """
    return GLOBAL_BUS.subscribe(listener)


class Emitter:
    """What a journal run emits through: its handle's bus and the process's, built only when heard."""

    __slots__ = ("_buses",)

    def __init__(self, buses: Iterable[EventBus] = ()) -> None:
        self._buses = (*buses, GLOBAL_BUS)

    @property
    def active(self) -> bool:
        """Whether anyone listens (check before building an event)."""
        return any(bus._listeners for bus in self._buses)

    def emit(self, event: Event) -> None:
        """Deliver `event` to every bus."""
        for bus in self._buses:
            if bus._listeners:
                bus.emit(event)


class EventStream:
    """`async for event in durable.events()`: the events of one handle, in order, as they happen.

    Listening starts when the stream is created (not at the first `__anext__`), so create it before
    starting the run. The stream ends after the event that ends an attempt (`execution_completed`,
    `failed`, `paused`, `cancelled`) unless `follow=True`; `close()` (or `async with`) stops listening.
    """

    def __init__(self, bus: EventBus, *, follow: bool = False) -> None:
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._follow = follow
        self._done = False
        self._unsubscribe = bus.subscribe(self._queue.put_nowait)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            self._done = True
            raise StopAsyncIteration
        if not self._follow and event.kind in EXECUTION_END_KINDS:
            self.close()
            self._done_after_this()
        return event

    def _done_after_this(self) -> None:
        self._queue.put_nowait(None)

    def close(self) -> None:
        """Stop listening; events already received can still be read."""
        self._unsubscribe()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
