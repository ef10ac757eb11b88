"""The short durable agent that `benchmarks/backends.py` interrupts and `perdure worker` drains.

`perdure worker --app backends_app:agent` serves `agent`: a pydantic-ai agent with
`PerdureDurability` whose deterministic `FunctionModel` makes two tool calls, one per response
(`lookup`, then `store`), then answers with text. A run journals five units: model request, `lookup`,
model request, `store`, model request.

`interrupt(storage, execution_id)` creates an interrupted execution honestly, in-process: the run
really starts and `store` raises `SimulatedCrash` (a `BaseException` the engine does not catch, as if
the process died there) before its side effect. The journal keeps the three units finished before it,
the head stays `success` with `attempts == 1`, and the lease is released on the way out: the state a
killed worker leaves behind once its lease expired.

Every executed `store` call appends `<execution id> <idempotency key> <pid> <time>` to a per-process
ledger file in `$BACKENDS_LEDGER_DIR`, so the benchmark can check that each execution's side effect
ran exactly once across all workers.

`python backends_app.py worker URL DIR INDEX CONCURRENCY` is one worker process of the benchmark: it
imports everything, opens the storage, touches `DIR/ready-INDEX`, waits until `DIR/go` exists, then
runs `Worker(storage, agent, concurrency=CONCURRENCY).run_async(once=True)` (what `perdure worker
--storage URL --app backends_app:agent --once` runs) and prints its report as one JSON line. The
barrier lets the benchmark time the drain itself, without the seconds of interpreter start-up and
imports that N processes starting at once spend on a small machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure.durable import DurableExecution, PerdureDurability, current_step
from perdure.durable.worker import Worker
from perdure.storage import storage_from_url
from perdure.storage.base import DurableExecutionStorage

__all__ = [
    "LEDGER_ENV",
    "PROMPT",
    "UNITS_DONE",
    "UNITS_INTERRUPTED",
    "SimulatedCrash",
    "agent",
    "interrupt",
    "main",
    "run_worker",
]

PROMPT = "Look up order 42 and store its total."
LEDGER_ENV = "BACKENDS_LEDGER_DIR"
UNITS_INTERRUPTED = 3
"""Journal entries of an interrupted execution: model request, `lookup`, model request."""
UNITS_DONE = 5
"""Journal entries of a completed execution: the three above, `store`, the final model request."""

_crash = False


class SimulatedCrash(BaseException):
    """Stands in for the process dying: not an `Exception`, so the engine records no failure."""


def _respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """One tool call per response, chosen by how many tool results the history holds."""
    returns = [
        p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)
    ]
    if not returns:
        return ModelResponse(parts=[ToolCallPart("lookup", {"order": 42})])
    if len(returns) == 1:
        looked_up = returns[0].content
        total = looked_up.get("total") if isinstance(looked_up, dict) else None
        return ModelResponse(parts=[ToolCallPart("store", {"order": 42, "total": total})])
    return ModelResponse(parts=[TextPart(f"stored order 42: {returns[-1].content}")])


agent: Agent[None, str] = Agent(
    FunctionModel(_respond), name="backends-bench", capabilities=[PerdureDurability()]
)
"""The agent the workers serve (`--app backends_app:agent`)."""


@agent.tool_plain
async def lookup(order: int) -> dict[str, object]:
    """Read an order (no side effect)."""
    return {"order": order, "total": 129.5, "currency": "EUR", "items": ["a", "b", "c"]}


@agent.tool_plain
async def store(order: int, total: float) -> str:
    """Store the total: the side effect that must happen exactly once per execution."""
    if _crash:
        raise SimulatedCrash("store")
    directory = os.environ.get(LEDGER_ENV)
    if directory:
        step = current_step()
        line = f"{step.execution_id} {step.idempotency_key} {os.getpid()} {time.time():.6f}\n".encode()
        fd = os.open(Path(directory) / f"ledger-{os.getpid()}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    return f"stored {order}={total}"


async def interrupt(storage: DurableExecutionStorage, execution_id: str) -> None:
    """Run execution `execution_id` until `store` is about to run, then 'kill' it there."""
    global _crash
    _crash = True
    try:
        durable = DurableExecution(storage, execution_id=execution_id, auto_cleanup=False)
        await durable.run_agent_async(agent, PROMPT)
    except SimulatedCrash:
        pass
    else:  # pragma: no cover - the crash point was never reached
        raise AssertionError(f"execution {execution_id} ran to completion instead of stopping at store")
    finally:
        _crash = False


async def run_worker(url: str, directory: Path, index: int, concurrency: int) -> dict[str, object]:
    """One benchmark worker: get ready, wait for the start signal, drain once, return the report."""
    storage = storage_from_url(url)
    try:
        await storage.get_stats_async()  # connect (and check the tables) before the clock starts
        worker = Worker(storage, agent, concurrency=concurrency, grace_period=0.0)
        (directory / f"ready-{index}").touch()
        go = directory / "go"
        while not go.exists():
            await asyncio.sleep(0.002)
        started, cpu = time.perf_counter(), time.process_time()
        report = await worker.run_async(once=True)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await storage.close_async()
    return {
        "index": index,
        "pid": os.getpid(),
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "recovered": len(report.recovered),
        "skipped": len(report.skipped),
        "failed": dict(report.failed),
        "paused": len(report.paused),
    }


def main(argv: list[str]) -> int:
    """`worker URL DIR INDEX CONCURRENCY`: see the module docstring."""
    if len(argv) != 5 or argv[0] != "worker":
        print("usage: backends_app.py worker URL DIR INDEX CONCURRENCY", file=sys.stderr)
        return 2
    _, url, directory, index, concurrency = argv
    result = asyncio.run(run_worker(url, Path(directory), int(index), int(concurrency)))
    print(json.dumps(result), flush=True)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
