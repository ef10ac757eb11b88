"""An agent module for the DBOS engine tests, run in subprocesses that the tests SIGKILL.

It uses only `PerdureDurability()`: the engine comes from `PERDURE_ENGINE=dbos` (set by the parent),
so this is exactly what a user's module looks like. Usage:

    python tests/support/dbos_app.py run|recover|enqueue DATABASE_URL EXECUTION_ID

Environment: `LEDGER` (every tool execution appends `<tool> <i> <idempotency key>`), `REQUESTS`
(every model request appends the number of tool results it saw), `CALLS` (tool calls in the run),
`TOOL` (`step`: idempotent, `charge`: non-idempotent), `TOOL_SLEEP` (seconds each tool sleeps before
its ledger line), `HANG_AT` (call index that hangs for 60 s after its ledger line, once: the marker
file `HANG_ONCE` is removed first, so a recovered re-run does not hang).

`run` starts the run and waits for it (the parent kills it midway); `recover` launches DBOS in a new
process, which recovers the PENDING run, and prints the final `EngineRun` as one JSON line;
`enqueue` puts the run on the DBOS queue `QUEUE` without launching DBOS here and waits for a
worker (`perdure worker --engine dbos --app dbos_app:agent`) to run it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from pydantic_ai import Agent, Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import UsageLimits

from perdure.durable.capability import PerdureDurability
from perdure.durable.execution import DurableExecution
from perdure.durable.step_context import current_step
from perdure.engines import EngineOptions
from perdure.engines import _dbos_runtime as runtime

CALLS = int(os.environ.get("CALLS", "10"))
TOOL = os.environ.get("TOOL", "step")


def _append(path_var: str, line: str) -> None:
    with open(os.environ[path_var], "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _tool_results(messages: list[ModelMessage]) -> int:
    return sum(1 for message in messages for part in message.parts if part.part_kind == "tool-return")


def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """One tool call per response, numbered by the results so far; text after `CALLS` calls."""
    done = _tool_results(messages)
    _append("REQUESTS", str(done))
    if done < CALLS:
        return ModelResponse(parts=[ToolCallPart(TOOL, {"i": done}, tool_call_id=f"call-{done}")])
    return ModelResponse(parts=[TextPart(f"finished {done} calls")])


def _effect(name: str, i: int) -> str:
    time.sleep(float(os.environ.get("TOOL_SLEEP", "0")))
    _append("LEDGER", f"{name} {i} {current_step().idempotency_key}")
    hang = os.environ.get("HANG_ONCE", "")
    if str(i) == os.environ.get("HANG_AT") and hang and os.path.exists(hang):
        os.remove(hang)
        time.sleep(60)
    return f"{name} {i} ok"


def step(i: int) -> str:
    """An idempotent tool (the default)."""
    return _effect("step", i)


def charge(i: int) -> str:
    """A non-idempotent tool: it must never run twice."""
    return _effect("charge", i)


agent = Agent(
    FunctionModel(model),
    name="dbos_crash",
    tools=[Tool(step), Tool(charge, metadata={"perdure": {"idempotent": False}})],
    capabilities=[PerdureDurability()],
)


async def main(mode: str, url: str, execution_id: str) -> None:
    options = EngineOptions(
        dbos_database_url=url, dbos_queue=os.environ.get("QUEUE") if mode == "enqueue" else None
    )
    durable = DurableExecution(engine="dbos", engine_options=options, execution_id=execution_id)
    engine = durable.engine
    try:
        if (
            mode == "enqueue" or mode == "run"
        ):  # a pure client: the run goes to the queue, a worker process runs it
            run = await durable.run_agent_async(agent, "go", usage_limits=UsageLimits(request_limit=None))
        else:
            engine.launch()  # recovers the PENDING run in the background
            run = await engine.result(execution_id, wait=True)
        info = await engine.describe(execution_id)
        out: dict[str, Any] = {
            "status": run.status.value,
            "output": run.output,
            "error": run.error,
            "error_type": (info or {}).get("error_details", {}) and info["error_details"]["type"],
            "launched_here": runtime.launched_key() is not None,
        }
        print(json.dumps(out), flush=True)
    finally:
        await engine.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
