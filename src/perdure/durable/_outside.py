"""The one-time warning when a durable-capable agent runs outside a durable execution.

An agent with `PerdureDurability` run directly (`agent.run(...)`, `agent.run_stream(...)`) behaves
like a plain pydantic-ai agent: nothing is journaled, so nothing survives a crash. That is easy to do
by accident, so the first such run of each agent logs a WARNING on the `perdure` logger naming what
to do instead. Code that runs an agent outside an execution on purpose silences it with
`PerdureDurability(warn_outside_execution=False)` or the `outside_execution_ok()` block.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["outside_execution_ok", "warn_outside_execution"]

logger = logging.getLogger("perdure")

_WARNED: set[str] = set()
_LOCK = threading.Lock()
_QUIET: ContextVar[bool] = ContextVar("perdure_outside_execution_ok", default=False)


@contextmanager
def outside_execution_ok() -> Iterator[None]:
    """Run durable-capable agents outside an execution on purpose: no warning inside this block."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


def warn_outside_execution(agent_name: str) -> None:
    """Log, once per agent name and process, that this run of `agent_name` is not durable."""
    if _QUIET.get():
        return
    with _LOCK:
        if agent_name in _WARNED:
            return
        _WARNED.add(agent_name)
    logger.warning(
        "Agent %r has PerdureDurability but runs outside a durable execution: nothing is being saved, "
        "and a crash loses the run. Run it with DurableExecution(storage).run_agent(agent, prompt) "
        "(or run_agent_stream_events to stream); pass PerdureDurability(warn_outside_execution=False) "
        "if running it directly is intended. This warning is logged once per agent.",
        agent_name,
    )
