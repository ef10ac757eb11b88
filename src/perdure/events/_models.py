"""The typed events of a durable execution: one pydantic model per kind, one `kind` discriminator.

Why one flat field set: a consumer (a progress bar, a log line, a span exporter, a webhook) reads
the same few fields whatever the kind, so every event carries them all and leaves the ones that do
not apply as None. The same models travel in-process (`on_event`, `DurableExecution.events()`) and
across processes (`perdure.watch`), and serialize to the same JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ..records import utcnow

__all__ = [
    "EVENT_ADAPTER",
    "EXECUTION_END_KINDS",
    "Event",
    "ExecutionCancelled",
    "ExecutionCompleted",
    "ExecutionEvent",
    "ExecutionFailed",
    "ExecutionPaused",
    "ExecutionResumed",
    "ExecutionStarted",
    "PerdureEvent",
    "UnitCompleted",
    "UnitEvent",
    "UnitFailed",
    "UnitReplayed",
    "UnitRetried",
    "UnitStarted",
]


class Event(BaseModel):
    """What every event says: which execution, when, and where in its journal."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: str
    execution_id: str
    name: str | None = None
    """The agent's name, or the workflow's registered name (None when the run has neither)."""
    at: datetime = Field(default_factory=utcnow)
    """When it happened (UTC); for events read back from storage, when it was stored."""
    attempt: int | None = None
    """Execution events: the attempt (1 = first run). Unit events: the unit's try (1 = first)."""
    step_index: int | None = None
    """The journal sequence of the unit (of the failing step for `execution_failed`)."""
    step_name: str | None = None
    """`model_request`, `tool:<name>`, a workflow step's name, ..."""
    replayed: bool = False
    """True when the unit was answered from the journal instead of running."""
    error_type: str | None = None
    error_message: str | None = None


class UnitEvent(Event):
    """A durable unit: a model request, a tool call, a workflow step."""

    unit_kind: str | None = None
    """`model_request`, `tool_call`, `step`, `other`, ..."""
    unit_key: str | None = None
    """The unit's replay key in the journal: the same for its started, retried and finished events."""
    tool_name: str | None = None
    tool_call_id: str | None = None
    duration: float | None = None
    """Seconds the unit ran (0 when replayed)."""
    input_tokens: int = 0
    output_tokens: int = 0


class UnitStarted(UnitEvent):
    """A unit starts running live (after the journal had no result for it)."""

    kind: Literal["unit_started"] = "unit_started"


class UnitCompleted(UnitEvent):
    """A unit ran and its result is journaled."""

    kind: Literal["unit_completed"] = "unit_completed"


class UnitFailed(UnitEvent):
    """A unit raised and will not be tried again in this attempt (the error ends or steers the run)."""

    kind: Literal["unit_failed"] = "unit_failed"


class UnitRetried(UnitEvent):
    """A try of a unit failed and its retry policy tries again after `delay` seconds."""

    kind: Literal["unit_retried"] = "unit_retried"
    delay: float | None = None


class UnitReplayed(UnitEvent):
    """A unit was answered from the journal: no model was paid, no tool ran again."""

    kind: Literal["unit_replayed"] = "unit_replayed"
    replayed: bool = True


class ExecutionEvent(Event):
    """A change of the execution's status."""

    status: str | None = None
    """The status the head was stored with (`success`, `paused`, `failed`, `completed`, `cancelled`)."""
    input_tokens: int = 0
    """Tokens of the whole execution so far (every attempt, replays not counted twice)."""
    output_tokens: int = 0
    requests: int = 0
    tool_calls: int = 0


class ExecutionStarted(ExecutionEvent):
    """The first attempt of an execution starts."""

    kind: Literal["execution_started"] = "execution_started"


class ExecutionResumed(ExecutionEvent):
    """A later attempt starts: the journal is replayed, then the run goes on live."""

    kind: Literal["execution_resumed"] = "execution_resumed"


class ExecutionPaused(ExecutionEvent):
    """The run waits for a human decision (approval, or an interrupted non-idempotent call)."""

    kind: Literal["execution_paused"] = "execution_paused"
    pending_kind: str | None = None
    pending_calls: list[dict[str, Any]] = Field(default_factory=list)
    """`{"tool_call_id", "tool_name"}` of each call waiting for a decision."""


class ExecutionFailed(ExecutionEvent):
    """An attempt ended with an error; resuming retries the failing step."""

    kind: Literal["execution_failed"] = "execution_failed"


class ExecutionCompleted(ExecutionEvent):
    """The run finished and its output is stored."""

    kind: Literal["execution_completed"] = "execution_completed"


class ExecutionCancelled(ExecutionEvent):
    """An operator cancelled or aborted the run; it will not be resumed automatically."""

    kind: Literal["execution_cancelled"] = "execution_cancelled"


PerdureEvent = Annotated[
    UnitStarted
    | UnitCompleted
    | UnitFailed
    | UnitRetried
    | UnitReplayed
    | ExecutionStarted
    | ExecutionResumed
    | ExecutionPaused
    | ExecutionFailed
    | ExecutionCompleted
    | ExecutionCancelled,
    Field(discriminator="kind"),
]
"""Any event; `EVENT_ADAPTER.validate_json(...)` reads one back from its JSON."""

EVENT_ADAPTER: TypeAdapter[PerdureEvent] = TypeAdapter(PerdureEvent)

EXECUTION_END_KINDS = frozenset(
    {"execution_paused", "execution_failed", "execution_completed", "execution_cancelled"}
)
"""Kinds that end an attempt."""
