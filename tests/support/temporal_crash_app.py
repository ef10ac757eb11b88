"""A deterministic six-step agent for the Temporal SIGKILL test, served by `perdure worker --engine temporal`.

The model (`FunctionModel`) calls tool `step` with `i = number of tool returns so far` until six
returned, then answers `done 6`; each request appends `request <n>` to `PERDURE_TEST_REQUESTS`
(n = tool returns it saw) and each tool execution appends `tool <i>` to `PERDURE_TEST_LEDGER`, then
sleeps `PERDURE_TEST_STEP_SECONDS` so that a kill lands while a tool call is in flight.
"""

from __future__ import annotations

import asyncio
import os

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure.durable.capability import PerdureDurability
from support.temporal_app import _append, _returns

__all__ = ["STEPS", "agent", "charging"]

STEPS = 6


def _respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    done = len(_returns(messages))
    _append("PERDURE_TEST_REQUESTS", f"request {done}")
    if done < STEPS:
        tool = "charge" if info.function_tools and info.function_tools[0].name == "charge" else "step"
        return ModelResponse(parts=[ToolCallPart(tool, {"i": done}, tool_call_id=f"call-{done}")])
    return ModelResponse(parts=[TextPart(f"done {done}")])


agent = Agent(
    FunctionModel(_respond, model_name="crash-model"), name="crash", capabilities=[PerdureDurability()]
)


@agent.tool_plain
async def step(i: int) -> str:
    """One unit of work with a visible side effect (a ledger line)."""
    _append("PERDURE_TEST_LEDGER", f"tool {i}")
    await asyncio.sleep(float(os.environ.get("PERDURE_TEST_STEP_SECONDS", "0.4")))
    return f"ok {i}"


charging = Agent(
    FunctionModel(_respond, model_name="charge-model"), name="charging", capabilities=[PerdureDurability()]
)


@charging.tool_plain(metadata={"perdure": {"idempotent": False}})
async def charge(i: int) -> str:
    """A side effect that must never happen twice (perdure runs it at most once on Temporal)."""
    _append("PERDURE_TEST_LEDGER", f"charge {i}")
    await asyncio.sleep(float(os.environ.get("PERDURE_TEST_STEP_SECONDS", "0.4")))
    return f"charged {i}"
