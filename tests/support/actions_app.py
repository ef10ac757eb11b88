"""Agents for the action commands' tests (`--app support.actions_app:agents`), on FunctionModel scripts.

- `approvals`: one model response asks for two tools that require approval (`transfer`, `close`).
- `payments`: `notify`, then the non-idempotent `pay`, which fails after its effect while `FAIL_PAY`
  is set, leaving a started-but-unrecorded call (an interrupted call that needs `resolve`).
- `slow`: `first`, then the sync `slow` (a thread, `ACTIONS_SLOW` seconds), then `last`: the unit
  boundaries a cooperative cancel stops at.

Every tool that takes effect appends `<tool> <pid>` (with `started`/`effect` for `slow`) to the file
`$ACTIONS_LEDGER`, so a test in another process sees what ran, and how often.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import Tool
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import DeferredToolRequests

from perdure import DurableExecution, _faults
from perdure.durable import PerdureDurability
from perdure.storage import DurableExecutionStorage

FAIL_PAY: list[int] = []
"""Non-empty: the next `pay` raises after its effect (popped once)."""


def ledger(*words: object) -> None:
    path = os.environ.get("ACTIONS_LEDGER")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (" ".join(map(str, (*words, os.getpid()))) + "\n").encode())
        finally:
            os.close(fd)


def read_ledger(path: Any) -> list[str]:
    try:
        with open(path) as handle:
            return [" ".join(line.split()[:-1]) for line in handle]
    except FileNotFoundError:
        return []


def _script(*calls: list[tuple[str, dict[str, Any]]]) -> FunctionModel:
    """One response per entry making those tool calls, then a text answer listing the tool returns."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        responses = sum(1 for m in messages if isinstance(m, ModelResponse))
        if responses < len(calls):
            return ModelResponse(
                parts=[
                    ToolCallPart(name, args, tool_call_id=f"call-{responses}-{i}")
                    for i, (name, args) in enumerate(calls[responses])
                ]
            )
        returns = [
            f"{p.tool_name}={p.content}"
            for m in messages
            if isinstance(m, ModelRequest)
            for p in m.parts
            if isinstance(p, ToolReturnPart)
        ]
        return ModelResponse(parts=[TextPart("done: " + "; ".join(returns))])

    return FunctionModel(respond)


def transfer(amount: int, to: str) -> str:
    """Transfer money (needs approval)."""
    ledger("transfer", amount, to)
    return f"sent {amount} to {to}"


def close(user: str) -> str:
    """Close an account (needs approval)."""
    ledger("close", user)
    return f"closed {user}"


def pay(amount: int) -> str:
    """Send a payment (non-idempotent)."""
    ledger("pay", amount)
    if FAIL_PAY:
        FAIL_PAY.pop()
        raise ConnectionError("connection reset after the payment was sent")
    return f"paid {amount}"


async def notify(text: str) -> str:
    """Notify someone."""
    ledger("notify", text)
    return f"notified {text}"


async def first(item: str) -> str:
    """First step."""
    ledger("first")
    return f"first {item}"


def slow(item: str) -> str:
    """A slow sync step (runs in a thread, cannot be interrupted)."""
    ledger("slow-started")
    time.sleep(float(os.environ.get("ACTIONS_SLOW", "2")))
    ledger("slow-effect")
    return f"slow {item}"


async def last(item: str) -> str:
    """Last step."""
    ledger("last")
    return f"last {item}"


approvals: PydanticAgent[None, Any] = PydanticAgent(
    _script([("transfer", {"amount": 100, "to": "bob"}), ("close", {"user": "eve"})]),
    name="approvals",
    tools=[Tool(transfer, requires_approval=True), Tool(close, requires_approval=True)],
    output_type=[str, DeferredToolRequests],
    capabilities=[PerdureDurability()],
)

payments: PydanticAgent[None, str] = PydanticAgent(
    _script([("notify", {"text": "a"})], [("pay", {"amount": 7})]),
    name="payments",
    tools=[Tool(notify), Tool(pay, metadata={"perdure": {"idempotent": False}})],
    capabilities=[PerdureDurability()],
)

slow_agent: PydanticAgent[None, str] = PydanticAgent(
    _script([("first", {"item": "x"})], [("slow", {"item": "x"})], [("last", {"item": "x"})]),
    name="slow",
    tools=[first, slow, last],
    capabilities=[PerdureDurability()],
)

agents: dict[str, Any] = {"approvals": approvals, "payments": payments, "slow": slow_agent}


async def start(storage: DurableExecutionStorage, kind: str, execution_id: str) -> Any:
    """Run a new execution of agent `kind` in this process (paused, failed or completed)."""
    durable = DurableExecution(storage, execution_id=execution_id, auto_cleanup=False)
    return await durable.run_agent_async(agents[kind], "go")


async def interrupt_slow(storage: DurableExecutionStorage, execution_id: str) -> None:
    """Start a `slow` execution and 'kill' it before its first tool: interrupted, `first` next."""
    with _faults.armed("before_tool_call", target="first", action="raise"):
        try:
            await start(storage, "slow", execution_id)
        except _faults.FaultInjected:
            return
    raise AssertionError("the crash point was never reached")  # pragma: no cover


def run_slow(url: str, execution_id: str, lease_ttl: float) -> None:
    """`python -c`: run a `slow` execution to its end in this process (a worker-like runner)."""
    from perdure.storage import storage_from_url

    async def main() -> None:
        storage = storage_from_url(url)
        try:
            durable = DurableExecution(
                storage, execution_id=execution_id, auto_cleanup=False, lease_ttl=lease_ttl
            )
            await durable.run_agent_async(slow_agent, "go")
        finally:
            await storage.close_async()

    asyncio.run(main())
