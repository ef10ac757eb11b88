"""What happens in durable executions, as typed events: in-process, across processes, summarized.

- In-process: `DurableExecution(..., on_event=callback)`, `async for event in durable.events()`, and
  `perdure.add_listener(callback)` for every execution of the process.
- Across processes: `perdure.watch(...)` reads the events of one execution or of all from the
  storage (PostgreSQL LISTEN/NOTIFY, Redis pub/sub, polling for SQLite and files).
- `execution_summary(execution_id, storage)`: progress, tokens used and saved, time spent.
"""

from ._bus import EventBus, EventStream, Listener, add_listener
from ._models import (
    EVENT_ADAPTER,
    Event,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionEvent,
    ExecutionFailed,
    ExecutionPaused,
    ExecutionResumed,
    ExecutionStarted,
    PerdureEvent,
    UnitCompleted,
    UnitEvent,
    UnitFailed,
    UnitReplayed,
    UnitRetried,
    UnitStarted,
)
from ._summary import ExecutionSummary, execution_summary, execution_summary_async
from ._watch import Watch, watch

__all__ = [
    "EVENT_ADAPTER",
    "Event",
    "EventBus",
    "EventStream",
    "ExecutionCancelled",
    "ExecutionCompleted",
    "ExecutionEvent",
    "ExecutionFailed",
    "ExecutionPaused",
    "ExecutionResumed",
    "ExecutionStarted",
    "ExecutionSummary",
    "Listener",
    "PerdureEvent",
    "UnitCompleted",
    "UnitEvent",
    "UnitFailed",
    "UnitReplayed",
    "UnitRetried",
    "UnitStarted",
    "Watch",
    "add_listener",
    "execution_summary",
    "execution_summary_async",
    "watch",
]
