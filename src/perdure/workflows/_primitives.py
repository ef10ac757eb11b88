"""Time, randomness, sleeps and typed state for workflows, journaled so a resume sees the same values.

A workflow re-runs from its start on every resume, so anything that differs between runs (the clock,
random numbers) must come from the journal: `now()` and `random()` record their value the first time
and return it on every replay. `sleep` records its wake-up time: a process killed during a sleep
resumes and waits only for what remains, and the execution's head carries `wake_at` so recovery
leaves it alone until then. Outside a workflow (or inside a step's body) they are the plain calls.
"""

from __future__ import annotations

import asyncio
import random as _random
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel

from .. import _faults
from ..errors import UserError
from ..records import utcnow
from ._context import active, dump, journaled

__all__ = ["now", "random", "save_state", "sleep", "sleep_until", "state"]

ModelT = TypeVar("ModelT", bound=BaseModel)


async def now() -> datetime:
    """The current UTC time; inside a workflow, the time journaled when this point first ran."""
    if active() is None:
        return utcnow()

    async def body() -> Any:
        return utcnow().isoformat()

    return datetime.fromisoformat(await journaled("now", body))


async def random() -> float:
    """A float in [0, 1); inside a workflow, the value journaled when this point first ran."""
    if active() is None:
        return _random.random()

    async def body() -> Any:
        return _random.random()

    value: float = await journaled("random", body)
    return value


async def sleep(seconds: float) -> None:
    """Wait `seconds`; in a workflow the wake-up time is journaled: a resume waits only what is left."""
    if seconds < 0:
        raise UserError(f"sleep needs seconds >= 0, got {seconds!r}.")
    await _sleep(lambda: utcnow() + timedelta(seconds=seconds), seconds)


async def sleep_until(moment: datetime) -> None:
    """Wait until `moment` (timezone-aware); durable inside a workflow like `sleep`."""
    if moment.tzinfo is None:
        raise UserError("sleep_until needs a timezone-aware datetime (e.g. datetime.now(UTC) + ...).")
    await _sleep(lambda: moment, None)


async def _sleep(wake_time: Any, seconds: float | None) -> None:
    workflow = active()
    if workflow is None:
        remaining = seconds if seconds is not None else (wake_time() - utcnow()).total_seconds()
        await asyncio.sleep(max(remaining, 0.0))
        return

    async def body() -> Any:
        return wake_time().isoformat()

    wake = datetime.fromisoformat(await journaled("sleep", body))
    remaining = (wake - utcnow()).total_seconds()
    run = workflow.run
    if remaining <= 0:
        if run.head.wake_at is not None:  # resumed after it was due: awake, stored with the next write
            run.head = run.head.model_copy(update={"wake_at": None})
        return
    run.head = run.head.model_copy(update={"wake_at": wake})
    await run.save_head()  # recovery leaves a sleeping execution alone until it is due
    _faults.point("before_sleep_wait")
    await asyncio.sleep(remaining)
    run.head = run.head.model_copy(update={"wake_at": None})  # stored with the next write


async def state(model: type[ModelT]) -> ModelT:
    """The workflow's state: the latest `save_state` value (as of this point), else `model()`."""
    workflow = active()
    if workflow is None or workflow.state is None:
        return model()
    return model.model_validate(workflow.state)


async def save_state(value: BaseModel) -> None:
    """Journal `value` as the workflow's state; `state(...)` returns it from here on, also after a resume.

    Outside a workflow run by `DurableExecution` (the function called directly) nothing is saved.
    """
    workflow = active()
    if workflow is None:  # a workflow called as a plain function: nothing is durable, nothing is kept
        return
    data = dump(type(value), value)

    async def body() -> Any:
        return data

    workflow.state = await journaled("save_state", body)
