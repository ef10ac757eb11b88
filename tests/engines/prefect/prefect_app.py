"""An agent module for the Prefect engine tests; its worker runs in subprocesses that the tests SIGKILL.

It uses `PerdureDurability(engine="prefect")`, as a user's module would (or `PERDURE_ENGINE=prefect`).
Usage (the Prefect API and result storage come from `PREFECT_API_URL` / `PREFECT_HOME`):

    python tests/engines/prefect/prefect_app.py serve

Environment: `LEDGER` (every tool execution appends `step <i>`), `REQUESTS` (every model request
appends the number of tool results it saw), `CALLS` (tool calls in the run), `HANG_AT` (call index
that hangs after its ledger line while the marker file `HANG_ONCE` exists: the test removes it after
the kill, so the re-run does not hang).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure.durable.capability import PerdureDurability
from perdure.engines import get_engine

CALLS = int(os.environ.get("CALLS", "4"))


def _append(path_var: str, line: str) -> None:
    path = os.environ.get(path_var)
    if not path:
        return
    with open(path, "a") as fh:
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
        return ModelResponse(parts=[ToolCallPart("step", {"i": done}, tool_call_id=f"call-{done}")])
    return ModelResponse(parts=[TextPart(f"finished {done} calls")])


agent = Agent(FunctionModel(model), name="prefect_crash", capabilities=[PerdureDurability(engine="prefect")])


@agent.tool_plain
def step(i: int) -> str:
    """Append to the ledger; hang at `HANG_AT` while the `HANG_ONCE` marker exists."""
    _append("LEDGER", f"step {i}")
    marker = os.environ.get("HANG_ONCE", "")
    if str(i) == os.environ.get("HANG_AT"):
        while marker and os.path.exists(marker):
            time.sleep(0.05)
    return f"step {i} ok"


async def serve() -> None:
    """Serve this module's agent on the Prefect engine until killed."""
    await get_engine("prefect").serve([agent])


if __name__ == "__main__":
    assert sys.argv[1:] == ["serve"], __doc__
    asyncio.run(serve())
