"""A small durable agent app that `perdure worker --app support.worker_app:agent` serves in the worker tests.

Three tools run in order (ScriptedModel calls every tool once, then answers). Every executed tool
call and every live model request appends `<kind> <idempotency key> <pid>` to a per-process ledger
file in `$WORKER_LEDGER_DIR`, so the test sees exactly which durable units ran, where, and whether
any ran twice. `SLOW_TOOLS` makes each tool sleep (asynchronously, so heartbeats keep running).

`PERDURE_FAULT=before_tool_call@<tool>` makes a process SIGKILL itself when that tool starts
(`python -c "from support import worker_app; worker_app.main([...])"`, see `main`, and `perdure._faults`).

`interrupt(...)` creates an interrupted execution honestly, in-process: the run is started with the
fault point `before_tool_call@<tool>` armed to raise `SimulatedCrash` (perdure's `FaultInjected`),
a `BaseException` the engine does not catch (like `KeyboardInterrupt` or the process dying), so the
journal keeps every unit finished before it and the head stays `success`: exactly the state a killed
worker leaves behind.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from pydantic_ai import Agent as PydanticAgent

from perdure import Agent, DurableExecution, Task, _faults, tool
from perdure.durable import PerdureDurability
from perdure.durable.journal import current_step
from perdure.models import ScriptedModel
from perdure.storage import DurableExecutionStorage, storage_from_url

__all__ = [
    "PROMPT",
    "TOOLS",
    "SimulatedCrash",
    "agent",
    "agents_by_name",
    "interrupt",
    "main",
    "pydantic_agent",
    "resolve",
]

PROMPT = "Reserve 'seat-12', charge it and notify 'alice' when done."

SimulatedCrash = _faults.FaultInjected
"""Stands in for the process dying: not an `Exception`, so the engine records no failure."""


def _ledger(kind: str, key: str) -> None:
    directory = os.environ.get("WORKER_LEDGER_DIR")
    if not directory:
        return
    line = f"{kind} {key} {os.getpid()}\n".encode()
    fd = os.open(Path(directory) / f"ledger-{os.getpid()}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


async def _effect(name: str) -> str:
    slow = float(os.environ.get("SLOW_TOOLS", "0"))
    if slow:
        await asyncio.sleep(slow)
    key = current_step().idempotency_key
    _ledger("tool", key)
    return f"{name}-done"


@tool
async def reserve(item: str) -> str:
    """Reserve an item."""
    return await _effect("reserve")


@tool
async def charge(item: str) -> str:
    """Charge the customer for the item."""
    return await _effect("charge")


@tool
async def notify(person: str) -> str:
    """Notify a person."""
    return await _effect("notify")


TOOLS = [reserve, charge, notify]


def _on_request(_n: int) -> None:
    _ledger("model", current_step().idempotency_key)


def _model() -> ScriptedModel:
    return ScriptedModel(on_request=_on_request)


agent = Agent(_model(), name="worker-app", tools=TOOLS)
"""The perdure facade agent the worker serves."""

pydantic_agent: PydanticAgent[None, str] = PydanticAgent(
    _model(), name="pyd-app", tools=TOOLS, capabilities=[PerdureDurability()]
)
"""The same agent as a plain pydantic-ai agent with the durability capability."""

agents_by_name: dict[str, Any] = {"worker-app": agent, "pyd-app": pydantic_agent}


def resolve(head: Any) -> Any:
    """Callable resolver: picks the agent by the recorded agent name."""
    return agents_by_name.get(head.task.agent_name)


async def interrupt(
    storage: DurableExecutionStorage, execution_id: str, at: str, *, facade: bool = True
) -> None:
    """Start execution `execution_id` and 'kill' it right before tool `at` runs."""
    with _faults.armed("before_tool_call", target=at, action="raise"):
        try:
            durable = DurableExecution(storage, execution_id=execution_id, auto_cleanup=False)
            if facade:
                await agent.do_async(Task(PROMPT, durable_execution=durable))
            else:
                await durable.run_agent_async(pydantic_agent, PROMPT)
        except SimulatedCrash:
            pass
        else:  # pragma: no cover - the crash point was never reached
            raise AssertionError(f"execution {execution_id} ran to completion; no crash at {at}")


def main(argv: list[str]) -> int:
    """`URL ID`: run one execution to the end (or to its `PERDURE_FAULT` crash) and print its output."""
    url, execution_id = argv
    storage = storage_from_url(url)
    durable = DurableExecution(storage, execution_id=execution_id, auto_cleanup=False)
    print(agent.do(Task(PROMPT, durable_execution=durable)))
    asyncio.run(storage.close_async())
    return 0


if __name__ == "__main__":  # pragma: no cover - run as `python -c "from support import worker_app; ..."`
    sys.exit(main(sys.argv[1:]))
