"""Agents for the Temporal engine tests: plain pydantic-ai agents carrying only `PerdureDurability()`.

Import this module with `PERDURE_ENGINE=temporal` set (the tests do, and `perdure worker --engine
temporal` does): the capability then binds to Temporal when the agents are built. The models are
deterministic `FunctionModel`s; `PERDURE_TEST_LEDGER` (a file) receives one line per tool execution
and `PERDURE_TEST_REQUESTS` one line per model request, so tests count what really ran.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure.durable.capability import PerdureDurability
from perdure.durable.retry import RetryPolicy

__all__ = ["AGENTS", "approval", "basic", "failing", "long", "slow"]


def _append(variable: str, line: str) -> None:
    path = os.environ.get(variable)
    if path:
        with Path(path).open("a", encoding="utf-8") as file:
            file.write(line + "\n")
            file.flush()
            os.fsync(file.fileno())


def _returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    return [part for message in messages for part in message.parts if isinstance(part, ToolReturnPart)]


def _one_call_then_text(tool: str, args: dict[str, object], agent: str) -> FunctionModel:
    """A model that calls `tool` once, then answers with the tool's return values."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = _returns(messages)
        _append("PERDURE_TEST_REQUESTS", f"{agent} request {len(returns)}")
        if not returns:
            return ModelResponse(parts=[ToolCallPart(tool, args, tool_call_id=f"{agent}-call")])
        return ModelResponse(parts=[TextPart(" | ".join(str(r.content) for r in returns))])

    return FunctionModel(respond, model_name=f"{agent}-model")


basic = Agent(
    _one_call_then_text("add", {"a": 2, "b": 3}, "basic"), name="basic", capabilities=[PerdureDurability()]
)


@basic.tool_plain
async def add(a: int, b: int) -> int:
    """Add two numbers."""
    _append("PERDURE_TEST_LEDGER", f"add {a} {b}")
    return a + b


approval = Agent(
    _one_call_then_text("transfer", {"amount": 100}, "approval"),
    name="approval",
    capabilities=[PerdureDurability()],
)


@approval.tool_plain(requires_approval=True)
async def transfer(amount: int) -> str:
    """Move money: a human approves first."""
    _append("PERDURE_TEST_LEDGER", f"transfer {amount}")
    return f"sent {amount}"


slow = Agent(
    _one_call_then_text("wait", {"seconds": 30}, "slow"), name="slow", capabilities=[PerdureDurability()]
)


@slow.tool_plain
async def wait(seconds: float) -> str:
    """Sleep long enough to be cancelled."""
    _append("PERDURE_TEST_LEDGER", "wait started")
    await asyncio.sleep(seconds)
    return "woke"


failing = Agent(
    _one_call_then_text("explode", {}, "failing"),
    name="failing",
    capabilities=[PerdureDurability(tool_retry=RetryPolicy(max_retries=1, retry_delay=0.05, jitter=0))],
)


@failing.tool_plain
async def explode() -> str:
    """Always fails; perdure's tool_retry (one retry) becomes Temporal's maximum_attempts=2."""
    _append("PERDURE_TEST_LEDGER", "explode")
    raise RuntimeError("boom")


def _steps(count: int) -> FunctionModel:
    """A model that calls `step` `count` times in a row (one call per response), then answers."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = len(_returns(messages))
        _append("PERDURE_TEST_REQUESTS", f"long request {done}")
        if done < count:
            return ModelResponse(parts=[ToolCallPart("step", {"i": done}, tool_call_id=f"long-{done}")])
        return ModelResponse(parts=[TextPart(f"{done} steps")])

    return FunctionModel(respond, model_name="long-model")


long = Agent(_steps(8), name="long", capabilities=[PerdureDurability()])


@long.tool_plain
async def step(i: int) -> int:
    """One step of a long run."""
    _append("PERDURE_TEST_LEDGER", f"step {i}")
    return i


AGENTS = [basic, approval, slow, failing, long]
