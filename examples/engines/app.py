"""One agent module for every engine: nothing here names SQLite, Temporal or DBOS.

`PerdureDurability()` reads the engine from the settings (`PERDURE_ENGINE`, `perdure.toml`) when the
agent is built, so moving this agent from embedded SQLite to Temporal changes configuration only.
"""

from __future__ import annotations

import os

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure.durable import PerdureDurability


def refund_desk(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A deterministic stand-in for an LLM: look the order up, refund it, then answer."""
    results = [part for message in messages for part in message.parts if part.part_kind == "tool-return"]
    if not results:
        return ModelResponse(parts=[ToolCallPart("find_order", {"order_id": 42})])
    if len(results) == 1:
        return ModelResponse(parts=[ToolCallPart("refund", {"order_id": 42, "amount": results[0].content})])
    return ModelResponse(parts=[TextPart(f"done: {results[-1].content}")])


# With a real provider: Agent("openai:gpt-4o-mini", name="refunds", capabilities=[PerdureDurability()])
agent = Agent(FunctionModel(refund_desk), name="refunds", capabilities=[PerdureDurability()])


def _ledger(line: str) -> None:
    """Every real execution of a tool appends a line, so you can count them."""
    with open(os.environ.get("LEDGER", "ledger.txt"), "a") as ledger:
        ledger.write(line + "\n")


@agent.tool_plain
def find_order(order_id: int) -> int:
    """Look an order up; returns its amount."""
    _ledger(f"find_order {order_id}")
    return 120


@agent.tool_plain
def refund(order_id: int, amount: int) -> str:
    """Refund an order."""
    _ledger(f"refund {order_id} {amount}")
    return f"refunded {amount} on order {order_id}"
