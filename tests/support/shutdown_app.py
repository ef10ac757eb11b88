"""Agents with one slow tool, served by `perdure worker --app support.shutdown_app:resolve` in test_shutdown.

Each agent calls `prepare`, then its slow tool, then `notify` (ScriptedModel calls every tool once,
in the order the prompt names them, then answers). The slow tool is a plain `def` in `sync-app`
(pydantic-ai runs it in a thread, which cannot be interrupted) and an `async def` in `async-app`
(cancellable at any `await`). It writes `started <key> <pid> <time>` to the ledger when it begins,
sleeps `SHUTDOWN_SLOW` seconds, and only then performs its external effect, `effect <key> <pid>
<time>`: a thread abandoned by a cancelled resume would therefore write its effect late, after
another worker may have run the same call again. The fast tools and every live model request write
an `effect` line too, so the ledger shows every unit that ran, where and when.

Ledgers are per process (`$WORKER_LEDGER_DIR/ledger-<pid>`), lines appended with O_APPEND.

`interrupt(...)` creates an interrupted execution honestly, in-process: the run really starts and
raises `SimulatedCrash` (perdure's `FaultInjected`, a `BaseException` the engine does not catch, as
if the process died) at the fault point `before_tool_call` of the slow tool, before its `started`
line: `prepare` and two model requests are journaled, the head says `success`, and the next unit a
resume runs is the slow tool.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from pydantic_ai import Agent as PydanticAgent

from perdure import DurableExecution, _faults
from perdure.durable import PerdureDurability
from perdure.durable.journal import current_step
from perdure.models import ScriptedModel
from perdure.storage import DurableExecutionStorage

__all__ = ["PROMPT", "SimulatedCrash", "agents", "interrupt", "ledger", "resolve"]

PROMPT = "Prepare 'order-7', process it slowly and notify 'bob' when done."

SLOW_TOOLS = "process_sync|process_async"
"""The slow tool of each agent, as a fault-point target."""

SimulatedCrash = _faults.FaultInjected
"""Stands in for the process dying: not an `Exception`, so the engine records no failure."""


def ledger(kind: str, key: str) -> None:
    """Append `<kind> <key> <pid> <time>` to this process's ledger (no-op without the env var)."""
    directory = os.environ.get("WORKER_LEDGER_DIR")
    if not directory:
        return
    line = f"{kind} {key} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(Path(directory) / f"ledger-{os.getpid()}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _slow() -> float:
    return float(os.environ.get("SHUTDOWN_SLOW", "3"))


def _begin() -> str:
    key = current_step().idempotency_key
    ledger("started", key)
    return key


async def prepare(item: str) -> str:
    """Prepare an item."""
    ledger("effect", current_step().idempotency_key)
    return f"prepared {item}"


def process_sync(item: str) -> str:
    """Process an item (slowly)."""
    key = _begin()
    time.sleep(_slow())  # a thread: SIGTERM and timeouts cannot interrupt this
    ledger("effect", key)  # the external effect, at the END of the work
    return f"processed {item}"


async def process_async(item: str) -> str:
    """Process an item (slowly)."""
    key = _begin()
    await asyncio.sleep(_slow())  # cancellable: a cancelled call never reaches its effect
    ledger("effect", key)
    return f"processed {item}"


async def notify(person: str) -> str:
    """Notify a person."""
    ledger("effect", current_step().idempotency_key)
    return f"notified {person}"


def _on_request(_n: int) -> None:
    ledger("effect", current_step().idempotency_key)


def _agent(name: str, slow_tool: Any) -> PydanticAgent[None, str]:
    return PydanticAgent(
        ScriptedModel(on_request=_on_request),
        name=name,
        tools=[prepare, slow_tool, notify],
        capabilities=[PerdureDurability()],
    )


agents: dict[str, PydanticAgent[None, str]] = {
    "sync": _agent("sync-app", process_sync),
    "async": _agent("async-app", process_async),
}
"""The agent of each mode, by mode."""


def resolve(head: Any) -> Any:
    """Callable resolver for `perdure worker --app support.shutdown_app:resolve`: by recorded agent name."""
    return next((a for a in agents.values() if a.name == head.task.agent_name), None)


async def interrupt(storage: DurableExecutionStorage, execution_id: str, mode: str) -> None:
    """Start execution `execution_id` of the `mode` agent and 'kill' it when the slow tool is called."""
    with _faults.armed("before_tool_call", target=SLOW_TOOLS, action="raise"):
        try:
            durable = DurableExecution(storage, execution_id=execution_id, auto_cleanup=False)
            await durable.run_agent_async(agents[mode], PROMPT)
        except SimulatedCrash:
            pass
        else:  # pragma: no cover - the crash point was never reached
            raise AssertionError(f"execution {execution_id} ran to completion; no crash at the slow tool")


async def reference_output(mode: str) -> Any:
    """The output of an uninterrupted run of the `mode` agent (in memory, no ledger, no sleep)."""
    saved = {k: os.environ.pop(k, None) for k in ("WORKER_LEDGER_DIR", "SHUTDOWN_SLOW")}
    os.environ["SHUTDOWN_SLOW"] = "0"
    try:
        result = await DurableExecution(execution_id="reference").run_agent_async(agents[mode], PROMPT)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return result.output
