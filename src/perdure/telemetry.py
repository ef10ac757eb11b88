"""OpenTelemetry spans of durable executions: one per attempt, one per durable unit (opt-in).

`instrument()` turns it on for every execution of the process; `uninstrument()` on the handle it
returns (or leaving it as a context manager) turns it off. Install the extra: `pip install
'perdure[otel]'`.

- `perdure attempt <name>`: one span per attempt of an execution, current while the attempt runs,
  so pydantic-ai's agent-run span (when its instrumentation is on) nests under it. Attributes
  `perdure.execution_id`, `perdure.name`, `perdure.attempt`, and at its end `perdure.status`,
  `perdure.tokens.input`/`output` (the execution's totals), `perdure.replayed_units`,
  `perdure.tokens_saved`; ERROR status when the attempt failed.
- `perdure <step_name>` (`perdure model_request`, `perdure tool:<name>`, a workflow step's name):
  one span per unit that runs live, a child of the span current when it starts (pydantic-ai's
  model-request or tool span when its instrumentation is on) and current while its body runs, so a
  nested agent run or an HTTP call inside it nests under it. Attributes `perdure.execution_id`,
  `perdure.name`, `perdure.step_index`, `perdure.step_name`, `perdure.unit_kind`, `perdure.unit_key`,
  `perdure.tool_name`, `perdure.tool_call_id`, `perdure.attempt`, `perdure.replayed`,
  `perdure.tokens.input`/`output`; each failed try that is retried is a `perdure.retry` event; a
  unit that raised has ERROR status and an `exception` event.
- A unit answered from the journal gets a zero-length span with `perdure.replayed=true`. Its parent
  is the innermost perdure span (the attempt, or the live unit it runs in): pydantic-ai never
  exports the spans of replayed work, so a parent of theirs would dangle.

Why events and one context manager, not wrappers: the spans are built from the engine's own events
(`perdure.events`), delivered synchronously in the task that runs the unit, so the current
OpenTelemetry context there is the unit's; the attempt span needs to be current around the whole
attempt, which only `attempt_scope` can do. When telemetry is off, no listener is registered, so the
engine does not build the events, and the attempt costs one no-op context manager. OpenTelemetry is
imported by `instrument()` only.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from .durable.journal import JournalRun
    from .events import Event, UnitEvent

__all__ = ["Instrumentation", "instrument", "is_instrumented"]

_MISSING = "perdure.telemetry needs OpenTelemetry: pip install 'perdure[otel]'"
_PAUSE_OR_ABORT = frozenset({"paused", "cancelled"})

_lock = threading.Lock()
_active: Instrumentation | None = None


def instrument(
    tracer_provider: TracerProvider | None = None, *, replayed_units: bool = True
) -> Instrumentation:
    """Emit OpenTelemetry spans for every durable execution of this process, until `uninstrument()`.

    Args:
        tracer_provider: Where the spans go; None: OpenTelemetry's global provider (set it with
            `opentelemetry.trace.set_tracer_provider`, or let Logfire set it). Give pydantic-ai's
            instrumentation the same provider (`Agent.instrument_all(InstrumentationSettings(
            tracer_provider=...))`) to see perdure's spans nested in its own.
        replayed_units: Also emit a zero-length span for each unit answered from the journal
            (False: a resume's spans show only what ran again).

    Returns:
        The handle; `uninstrument()` (or leaving `with instrument(...):`) turns telemetry off.
        Calling `instrument()` again replaces the previous instrumentation.

    Raises:
        ImportError: OpenTelemetry is not installed (`pip install 'perdure[otel]'`).

    Example:
        ```python
        from opentelemetry.sdk.trace import TracerProvider
        from perdure.telemetry import instrument

        instrument(TracerProvider())  # every attempt and unit of every execution is a span
        ```

    """
    global _active
    try:
        from opentelemetry import context as otel_context
        from opentelemetry import trace
    except ImportError as exc:  # pragma: no cover - opentelemetry-api comes with pydantic-ai
        raise ImportError(_MISSING) from exc
    from . import __version__
    from .events import add_listener

    tracer = trace.get_tracer("perdure", __version__, tracer_provider=tracer_provider)
    handle = Instrumentation(tracer, otel_context.create_key("perdure-span"), replayed_units)
    with _lock:
        previous, _active = _active, handle
        handle._unsubscribe = add_listener(handle._on_event)
    if previous is not None:
        previous.uninstrument()
    return handle


def is_instrumented() -> bool:
    """Whether `instrument()` is on."""
    return _active is not None


def attempt_span(run: JournalRun) -> _AttemptSpan | _NoSpan:
    """The span of the attempt `run`; a no-op when telemetry is off (engine plumbing, not exported).

    `perdure.durable`'s attempt scope enters it around the attempt's body and calls `end()` once the
    attempt's end is recorded.
    """
    active = _active
    return _NO_SPAN if active is None else active._attempt(run)


class _NoSpan(AbstractContextManager[None]):
    """The attempt span when telemetry is off."""

    def __exit__(self, *exc: object) -> None:
        return None

    def end(self) -> None:
        """Nothing to end."""


_NO_SPAN = _NoSpan()


@dataclass
class _OpenUnit:
    span: Span
    token: Token[Context]


@dataclass
class Instrumentation:
    """The handle `instrument()` returns: turn telemetry off with `uninstrument()`."""

    tracer: Tracer
    """The tracer perdure's spans are made with."""
    _key: str
    _replayed_units: bool
    _units: dict[tuple[str, str], _OpenUnit] = field(default_factory=dict)
    _attempts: dict[str, _AttemptSpan] = field(default_factory=dict)
    """Attempts whose scope ended cleanly, waiting for the event that records their end."""
    _unsubscribe: Any = None

    @property
    def active(self) -> bool:
        """Whether this instrumentation still emits spans."""
        return self._unsubscribe is not None

    def uninstrument(self) -> None:
        """Stop emitting spans (spans of units still running are ended, marked unfinished)."""
        global _active
        with _lock:
            if _active is self:
                _active = None
            unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        for key in list(self._units):
            self._abandon(key)
        for execution_id in list(self._attempts):
            self._attempt_ended(execution_id, unfinished=True)

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstrument()

    # ---- attempts ---------------------------------------------------------------------------------

    def _attempt(self, run: JournalRun) -> _AttemptSpan:
        from .events._derive import run_name

        head = run.head
        self._attempt_ended(head.execution_id, unfinished=True)  # its end was never recorded
        name = run_name(head)
        attributes: dict[str, Any] = {
            "perdure.execution_id": head.execution_id,
            "perdure.attempt": head.attempts,
        }
        if name:
            attributes["perdure.name"] = name
        span = self.tracer.start_span(f"perdure attempt {name or head.execution_id}", attributes=attributes)
        return _AttemptSpan(self, run, span)

    def _attempt_ended(self, execution_id: str, *, unfinished: bool = False) -> None:
        waiting = self._attempts.pop(execution_id, None)
        if waiting is not None:
            waiting.finish(unfinished=unfinished)

    def _execution_ended(self, event: Event) -> None:
        self._attempt_ended(event.execution_id)

    # ---- units ------------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        handler = _HANDLERS.get(event.kind)
        if handler is not None:
            handler(self, event)

    def _unit_started(self, event: UnitEvent) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        span = self.tracer.start_span(f"perdure {event.step_name}", attributes=_unit_attributes(event))
        parent = trace.set_span_in_context(span)
        token = otel_context.attach(otel_context.set_value(self._key, span, parent))
        self._units[(event.execution_id, event.unit_key or "")] = _OpenUnit(span, token)

    def _unit_ended(self, event: UnitEvent) -> None:
        from opentelemetry import context as otel_context

        opened = self._units.pop((event.execution_id, event.unit_key or ""), None)
        if opened is None:  # resolved by an operator's decision: it did not run here
            self._instant(event)
            return
        span = opened.span
        span.set_attributes(  # what the start did not know (the others were set then)
            {
                "perdure.step_index": event.step_index if event.step_index is not None else -1,
                "perdure.attempt": event.attempt or 1,
                "perdure.tokens.input": event.input_tokens,
                "perdure.tokens.output": event.output_tokens,
            }
        )
        if event.kind == "unit_failed":
            _record_error(span, event.error_type, event.error_message)
        span.end()
        otel_context.detach(opened.token)

    def _unit_retried(self, event: UnitEvent) -> None:
        opened = self._units.get((event.execution_id, event.unit_key or ""))
        if opened is None:
            return
        attributes: dict[str, Any] = {"perdure.attempt": event.attempt or 0}
        if event.error_type:
            attributes["exception.type"] = event.error_type
        if event.error_message:
            attributes["exception.message"] = event.error_message
        delay = getattr(event, "delay", None)
        if delay is not None:
            attributes["perdure.retry_delay"] = float(delay)
        opened.span.add_event("perdure.retry", attributes)

    def _unit_replayed(self, event: UnitEvent) -> None:
        if self._replayed_units:
            self._instant(event)

    def _instant(self, event: UnitEvent) -> None:
        """A zero-length span under the innermost perdure span (see the module's docstring)."""
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        nearest = otel_context.get_value(self._key)
        parent: Context | None = (
            trace.set_span_in_context(nearest) if isinstance(nearest, trace.Span) else None
        )
        now = time.time_ns()
        span = self.tracer.start_span(
            f"perdure {event.step_name}", context=parent, attributes=_unit_attributes(event), start_time=now
        )
        span.end(end_time=now)

    def _abandon(self, key: tuple[str, str]) -> None:
        """End the span of a unit that will send no end event (cancelled, or telemetry turned off)."""
        opened = self._units.pop(key, None)
        if opened is not None:
            opened.span.set_attribute("perdure.unfinished", True)
            opened.span.end()

    def _abandon_execution(self, execution_id: str) -> None:
        for key in [key for key in self._units if key[0] == execution_id]:
            self._abandon(key)


_HANDLERS: dict[str, Any] = {
    "unit_started": Instrumentation._unit_started,
    "unit_completed": Instrumentation._unit_ended,
    "unit_failed": Instrumentation._unit_ended,
    "unit_retried": Instrumentation._unit_retried,
    "unit_replayed": Instrumentation._unit_replayed,
    **dict.fromkeys(
        ("execution_completed", "execution_paused", "execution_failed", "execution_cancelled"),
        Instrumentation._execution_ended,
    ),
}


def _unit_attributes(event: UnitEvent) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "perdure.execution_id": event.execution_id,
        "perdure.step_index": event.step_index if event.step_index is not None else -1,
        "perdure.step_name": event.step_name or "",
        "perdure.unit_kind": event.unit_kind or "",
        "perdure.unit_key": event.unit_key or "",
        "perdure.replayed": event.replayed,
        "perdure.attempt": event.attempt or 1,
        "perdure.tokens.input": event.input_tokens,
        "perdure.tokens.output": event.output_tokens,
    }
    if event.name:
        attributes["perdure.name"] = event.name
    if event.tool_name:
        attributes["perdure.tool_name"] = event.tool_name
    if event.tool_call_id:
        attributes["perdure.tool_call_id"] = event.tool_call_id
    return attributes


def _record_error(span: Span, error_type: str | None, message: str | None) -> None:
    """ERROR status, and the `exception` event: with its traceback when the error is being handled."""
    from opentelemetry.trace import Status, StatusCode

    handled = sys.exc_info()[1]  # events of a failure are emitted from inside the `except` block
    if handled is not None and type(handled).__name__ == error_type:
        span.record_exception(handled)
    else:
        span.add_event("exception", {"exception.type": error_type or "", "exception.message": message or ""})
    span.set_status(Status(StatusCode.ERROR, f"{error_type}: {message}" if error_type else message))


class _AttemptSpan(AbstractContextManager[None]):
    """The span of one attempt: current while the attempt's body runs, ended with its final status."""

    def __init__(self, owner: Instrumentation, run: JournalRun, span: Span) -> None:
        self._owner = owner
        self._run = run
        self._span = span
        self._token: Token[Context] | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        current = trace.set_span_in_context(self._span)
        self._token = otel_context.attach(otel_context.set_value(self._owner._key, self._span, current))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        from opentelemetry import context as otel_context

        self._error = exc
        if self._token is not None:
            # Also drops what a unit cancelled mid-way left attached (it sent no end event).
            otel_context.detach(self._token)
            self._token = None

    def end(self) -> None:
        """End the span once the attempt's end is recorded, or wait for the event that records it."""
        head = self._run.head
        self._owner._abandon_execution(head.execution_id)
        if self._error is None and head.status.value == "success" and self._owner.active:
            # The engine records a completion (or a pause for approvals) after the attempt's scope:
            # the span ends with that event (`_execution_ended`).
            self._owner._attempts[head.execution_id] = self
            return
        self.finish()

    def finish(self, *, unfinished: bool = False) -> None:
        """Set the final attributes and status, and end the span."""
        from opentelemetry.trace import Status, StatusCode

        head = self._run.head
        span = self._span
        status = head.status.value
        span.set_attributes(
            {
                "perdure.status": status,
                "perdure.step_index": head.step_index,
                "perdure.tokens.input": head.usage.input_tokens,
                "perdure.tokens.output": head.usage.output_tokens,
                "perdure.replayed_units": head.replay.replayed_units,
                "perdure.tokens_saved": head.replay.tokens_saved,
            }
        )
        if unfinished:
            span.set_attribute("perdure.unfinished", True)
        error = self._error
        if status not in _PAUSE_OR_ABORT and (error is not None or status == "failed"):
            if error is not None:
                span.record_exception(error)
            message = head.error.message if head.error is not None else repr(error)
            span.set_status(Status(StatusCode.ERROR, message))
        elif status == "completed":
            span.set_status(Status(StatusCode.OK))
        span.end()
