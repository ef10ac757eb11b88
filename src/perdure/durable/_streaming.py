"""Durable streaming: live model deltas out of durable units, replayed events marked on resume.

How pydantic-ai streams under a durability capability (its public `durable_exec` design): a streamed
model request runs as ONE durable unit that consumes the provider's stream inside the unit, hands
the live events to the capability's `event_stream_handler`, and returns the final `ModelResponse`,
which is what gets journaled. The run itself (and a run-level `event_stream_handler`) then sees that
response replayed as one event per part, after the unit finished. So:

- a crash mid-stream loses only that request's unjournaled response: the resume re-sends that one
  request, every unit journaled before it replays;
- live deltas can only leave the unit through the capability-level handler, to a consumer that runs
  concurrently with the run.

perdure wires that up per attempt with an `EventSink` held in a context variable:

- `forwarder(...)` is the handler `PerdureDurability` gives pydantic-ai: inside a live model unit it
  copies each `PartStartEvent` / `PartDeltaEvent` / `PartEndEvent` to the sink (marked live);
- `relay(...)` is `PerdureDurability.wrap_run_event_stream`'s body: it copies the run's own events
  (tool calls and results, `FinalResultEvent`, the parts of replayed model responses) to the sink,
  and drops the parts of a response whose deltas already went out live (no duplicate text);
- `live_body(...)` wraps every unit's body: the first body that actually runs (the journal is
  exhausted) switches the sink from replay to live.

Replay marking: an event is `replayed=True` while the attempt is still replaying the journal, that
is until the first unit of this attempt runs live; everything after that is `replayed=False`. A
replayed event re-delivers what the journal already holds (an earlier attempt delivered it, or would
have, had it not crashed between the journal write and the event). Because the journal is a prefix of
the run, every replayed event reaches the consumer before the first live one.

The consumer side is `DurableEventStream`, returned by `DurableExecution.run_agent_stream_events` and
`resume_agent_stream_events`: the attempt runs in a background task and the events arrive through a
queue, the way pydantic-ai's own `agent.run_stream_events()` works.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.messages import AgentStreamEvent, PartDeltaEvent, PartEndEvent, PartStartEvent
from pydantic_ai.run import AgentRunResultEvent
from pydantic_ai.tools import RunContext

if TYPE_CHECKING:
    from .engine import AttemptResult

__all__ = [
    "DurableEventStream",
    "EventSink",
    "StreamedEvent",
    "forwarder",
    "live_body",
    "muted",
    "relay",
    "streaming_active",
]

OutputT = TypeVar("OutputT")
R = TypeVar("R")

_MODEL_PART_EVENTS = (PartStartEvent, PartDeltaEvent, PartEndEvent)
"""The events a model's live stream produces (the run adds `FinalResultEvent` itself)."""


@dataclass(frozen=True)
class StreamedEvent(Generic[OutputT]):
    """One event of a durable streamed run, as the consumer of `DurableEventStream` sees it.

    `event` is pydantic-ai's event, unchanged: an `AgentStreamEvent` (`PartStartEvent`,
    `PartDeltaEvent`, `FunctionToolCallEvent`, ...), and last an `AgentRunResultEvent` carrying the
    run's result. `replayed` is true when the event re-delivers a part of the run that the journal
    already held when this attempt started (see the module docstring); every replayed event comes
    before the first live one.
    """

    event: AgentStreamEvent | AgentRunResultEvent[OutputT]
    replayed: bool


class EventSink:
    """Where one attempt's events go: a queue the consumer reads, plus the replay/live switch."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[StreamedEvent[Any] | None] = asyncio.Queue()
        self.live = False
        """Whether a unit of this attempt has run live (the journal is exhausted)."""
        self.streamed_requests = 0
        """Model requests whose live stream went to the sink (their run-side parts are duplicates)."""

    def put(self, event: AgentStreamEvent | AgentRunResultEvent[Any], *, replayed: bool) -> None:
        """Hand an event to the consumer."""
        self.queue.put_nowait(StreamedEvent(event, replayed))


_SINK: ContextVar[EventSink | None] = ContextVar("perdure_event_sink", default=None)


def streaming_active() -> bool:
    """Whether the run in this context streams its events to a `DurableEventStream`."""
    return _SINK.get() is not None


@contextmanager
def muted() -> Iterator[None]:
    """Keep the events of a run nested in a unit (an agent called by a tool) out of the outer stream."""
    token = _SINK.set(None)
    try:
        yield
    finally:
        _SINK.reset(token)


def live_body(body: Callable[[], Awaitable[R]]) -> Callable[[], Awaitable[R]]:
    """Wrap a unit's body so that running it switches the stream from replay to live."""
    sink = _SINK.get()
    if sink is None:
        return body

    async def run() -> R:
        sink.live = True
        return await body()

    return run


def forwarder(user_handler: EventStreamHandler[Any] | None) -> EventStreamHandler[Any]:
    """The capability-level handler: the user's own (if any), plus live model events to the sink.

    pydantic-ai calls it inside a live streamed model unit with the provider's stream, and (when the
    user gave `PerdureDurability(event_stream_handler=...)`) inside its event units with single
    events. Outside a streamed execution it is the user's handler alone.
    """

    async def handler(ctx: RunContext[Any], events: AsyncIterable[AgentStreamEvent]) -> None:
        sink = _SINK.get()
        if sink is None:
            if user_handler is not None:
                await user_handler(ctx, events)
            return
        counted = False

        async def tee() -> AsyncIterator[AgentStreamEvent]:
            nonlocal counted
            async for event in events:
                if isinstance(event, _MODEL_PART_EVENTS):
                    if not counted:
                        counted = True
                        sink.live = True
                        sink.streamed_requests += 1
                    sink.put(event, replayed=False)
                yield event

        stream = tee()
        if user_handler is not None:
            await user_handler(ctx, stream)
        async for _ in stream:  # what the user's handler left: the consumer still gets all of it
            pass

    return handler


async def relay(stream: AsyncIterable[AgentStreamEvent]) -> AsyncIterator[AgentStreamEvent]:
    """Copy one node's run-side events to the sink (all of them still flow on to the run)."""
    sink = _SINK.get()
    if sink is None:
        async for event in stream:
            yield event
        return
    streamed_before = sink.streamed_requests
    async for event in stream:
        # The first event of a model request node arrives after its unit ran: had it streamed live,
        # its parts already went out delta by delta and these are the same parts again.
        duplicate = isinstance(event, _MODEL_PART_EVENTS) and sink.streamed_requests > streamed_before
        if not duplicate:
            sink.put(event, replayed=not sink.live)
        yield event


class DurableEventStream(Generic[OutputT]):
    """The events of one attempt of a durable execution, as the attempt runs: `async for` it.

    Yields `StreamedEvent`s: on a resume first the journaled part of the run at once (marked
    `replayed=True`), then live events, model text arriving delta by delta as the model produces
    it; the last one carries `AgentRunResultEvent`. After the iteration ended, `result` is the
    attempt's `AttemptResult` (output, head, replay statistics). An error of the run is raised from
    the iteration after the events before it were delivered.

    The attempt starts at the first iteration step and runs in a background task. Use it as an
    `async with` block (or call `aclose()`) when you may stop iterating early: leaving the block
    cancels the attempt, which stops it like any interrupted attempt (its journal stays; resume it).
    """

    def __init__(self, start: Callable[[], Awaitable[AttemptResult[OutputT]]]) -> None:
        self._start = start
        self._sink = EventSink()
        self._task: asyncio.Task[AttemptResult[OutputT]] | None = None
        self._finished = False
        self.result: AttemptResult[OutputT] | None = None
        """The attempt's result, once the iteration ended without an error."""

    def __aiter__(self) -> DurableEventStream[OutputT]:
        return self

    async def __anext__(self) -> StreamedEvent[OutputT]:
        if self._finished:
            raise StopAsyncIteration
        if self._task is None:
            token = _SINK.set(self._sink)
            try:  # the task copies this context, sink included
                self._task = asyncio.ensure_future(self._run())
            finally:
                _SINK.reset(token)
        item = await self._sink.queue.get()
        if item is None:
            self._finished = True
            await asyncio.wait({self._task})
            if not self._task.cancelled() and (error := self._task.exception()) is not None:
                raise error
            raise StopAsyncIteration
        return item

    async def _run(self) -> AttemptResult[OutputT]:
        try:
            result = await self._start()
            self.result = result
            self._sink.put(AgentRunResultEvent(result.result), replayed=False)
            return result
        finally:
            self._sink.queue.put_nowait(None)

    async def aclose(self) -> None:
        """Stop: cancel the attempt if it still runs, and wait until it stopped."""
        self._finished = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> DurableEventStream[OutputT]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
