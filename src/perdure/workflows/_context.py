"""The workflow attempt running in this context, and how its own units are journaled by position.

A workflow's own units (steps, agent runs, sleeps, `now()`, `random()`, saved states) are keyed by
their position in the workflow (`w1`, `w2`, ...), so a resume that reaches a position with another
unit than the journal recorded there is refused (`JournalMismatchError` naming both). Positions are
only taken at the workflow's own level: inside a step's body, or inside an agent run (its tools), a
step, `sleep` or `now()` is part of the enclosing unit and runs as plain code, because that code
runs again only when the enclosing unit does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticSerializationError

from ..codec import JOURNAL_CODEC
from ..durable._keys import workflow_key
from ..durable.journal import JournalRun, UnitIdentity, in_unit_scope, serialization_failure
from ..records import StepKind

__all__ = ["INSIDE_STEP", "ActiveWorkflow", "activate", "active", "dump", "journaled"]


@dataclass
class ActiveWorkflow:
    """One attempt of a workflow execution: its journal run and the latest saved state."""

    run: JournalRun
    name: str
    state: Any = None
    """JSON of the state the workflow saved last (replayed saves count: it is the same on resume)."""


_ACTIVE: ContextVar[ActiveWorkflow | None] = ContextVar("perdure_workflow", default=None)
INSIDE_STEP: ContextVar[bool] = ContextVar("perdure_inside_step", default=False)
"""True while a step's body runs: what it calls belongs to the step."""


def activate(workflow: ActiveWorkflow) -> Any:
    """Install `workflow` as the one running in this context; returns the token to reset."""
    return _ACTIVE.set(workflow)


def deactivate(token: Any) -> None:
    """Undo `activate`."""
    _ACTIVE.reset(token)


def active() -> ActiveWorkflow | None:
    """The workflow whose own level is running here; None outside workflows, in steps and agent runs."""
    workflow = _ACTIVE.get()
    if workflow is None or INSIDE_STEP.get() or in_unit_scope():
        return None
    return workflow


def dump(tp: Any, value: Any) -> Any:
    """`value` as JSON data for the journal, refusing what JSON cannot store (`SerializationError`)."""
    try:
        return JOURNAL_CODEC.dump(tp, value)
    except (TypeError, ValueError, PydanticSerializationError) as exc:
        raise serialization_failure(exc) from exc


async def journaled(
    name: str,
    body: Callable[[], Awaitable[Any]],
    *,
    config: Mapping[str, Any] | None = None,
) -> Any:
    """Journal the next own unit of the active workflow: its recorded JSON result, or run `body`."""
    workflow = _ACTIVE.get()
    if workflow is None:  # pragma: no cover - callers check `active()` first
        raise RuntimeError("no workflow is running here")
    run = workflow.run
    key = workflow_key(run.next_position())
    return await run.run_unit(UnitIdentity(StepKind.STEP, name, "w", key=key), body, config)
