"""A small agent for the event and summary tests: its model calls the tool `step` N times, then answers.

`BROKEN` holds the names (`step<n>`) of calls that raise; `RAN` lists the calls that really ran.
"""

from __future__ import annotations

from typing import Any

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure import PerdureDurability

__all__ = ["BROKEN", "RAN", "stepper", "tool_returns"]

BROKEN: set[str] = set()
RAN: list[str] = []


def tool_returns(messages: list[ModelMessage]) -> int:
    """How many tool results the history holds."""
    return sum(1 for m in messages for p in getattr(m, "parts", ()) if isinstance(p, ToolReturnPart))


def stepper(tools: int = 2, **capability: Any) -> PydanticAgent[None, str]:
    """The agent named `stepper`, calling `step(n)` for n = 1..tools, one call per model response."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = tool_returns(messages)
        if done < tools:
            return ModelResponse(parts=[ToolCallPart("step", {"n": done + 1})])
        return ModelResponse(parts=[TextPart(f"did {done}")])

    def step(n: int) -> str:
        RAN.append(f"step{n}")
        if f"step{n}" in BROKEN:
            raise RuntimeError(f"step {n} is down")
        return f"step {n} ok"

    return PydanticAgent(
        FunctionModel(respond),
        name="stepper",
        tools=[Tool(step)],
        capabilities=[PerdureDurability(**capability)],
    )
