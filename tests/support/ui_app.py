"""Real executions for the dashboard tests (`tests/ui`): every shape the pages show.

`populate(storage)` runs, with pydantic-ai `FunctionModel` agents under `PerdureDurability`:

- `done`: `ui-clerk` calls `lookup` (whose result holds a `<script>` payload) and answers: completed;
- `failed`: `ui-clerk` whose `store` always raises under a `RetryPolicy` (2 tries): failed, with a
  journaled failed attempt;
- `paused`: `ui-banker` whose `transfer` requires approval: paused on one call. Approving it
  resumes the run, whose `transfer` takes `TRANSFER_SECONDS` (so a page sees it running, then done).

`AGENTS` is what `perdure ui --app support.ui_app:AGENTS` takes. `python -m support.ui_app URL` fills
a storage for looking at the dashboard by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

from pydantic_ai import Agent, Tool
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

from perdure import DurableExecution, PerdureDurability, RetryPolicy
from perdure.storage import DurableExecutionStorage

__all__ = ["AGENTS", "PAYLOAD", "TRANSFER_SECONDS", "populate"]

PAYLOAD = (
    "<script>document.title='pwned';window.__pwned=1;alert('xss')</script>"
    '<img src=x onerror="window.__pwned=2">'
)
TRANSFER_SECONDS = 2.5
transfers: list[dict[str, Any]] = []


def _returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    return [
        p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)
    ]


def _clerk_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    done = len(_returns(messages))
    if done == 0:
        return ModelResponse(
            parts=[ToolCallPart("lookup", {"query": "orders of ACME"}, tool_call_id="c-lookup")]
        )
    if done == 1:
        return ModelResponse(parts=[ToolCallPart("store", {"key": "orders"}, tool_call_id="c-store")])
    return ModelResponse(parts=[TextPart("Stored the orders: 3 found, total 120.50 EUR.")])


def lookup(query: str) -> dict[str, Any]:
    """Look something up."""
    return {"query": query, "note": PAYLOAD, "orders": [41.5, 40.0, 39.0]}


def store(key: str) -> str:
    """Store it."""
    return f"stored {key}"


def failing_store(key: str) -> str:
    """Store it, but the warehouse is down."""
    raise ConnectionError("the warehouse API is down")


def _banker_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returns = _returns(messages)
    if not returns:
        return ModelResponse(
            parts=[ToolCallPart("transfer", {"amount": 100, "to": "bob"}, tool_call_id="c-transfer")]
        )
    return ModelResponse(parts=[TextPart(f"Transfer done: {returns[-1].content}")])


async def transfer(amount: int, to: str) -> str:
    """Transfer money (slow: a bank API)."""
    await asyncio.sleep(TRANSFER_SECONDS)
    transfers.append({"amount": amount, "to": to})
    return f"sent {amount} to {to}"


clerk = Agent(
    FunctionModel(_clerk_model, model_name="clerk-model"),
    name="ui-clerk",
    tools=[lookup, store],
    capabilities=[PerdureDurability()],
)
broken_clerk = Agent(
    FunctionModel(_clerk_model, model_name="clerk-model"),
    name="ui-clerk",
    tools=[lookup, Tool(failing_store, name="store")],
    capabilities=[PerdureDurability(tool_retry=RetryPolicy(max_retries=1, retry_delay=0.01))],
)
banker = Agent(
    FunctionModel(_banker_model, model_name="banker-model"),
    name="ui-banker",
    output_type=[str, DeferredToolRequests],
    tools=[Tool(transfer, requires_approval=True)],
    capabilities=[PerdureDurability()],
)
AGENTS = {"ui-clerk": clerk, "ui-banker": banker}


async def populate(storage: DurableExecutionStorage) -> dict[str, str]:
    """Run the executions described above in `storage`; their ids by name."""
    ids: dict[str, str] = {}
    done = DurableExecution(storage, auto_cleanup=False)
    await done.run_agent_async(clerk, "Find and store the orders of ACME")
    ids["done"] = done.execution_id
    failed = DurableExecution(storage, auto_cleanup=False)
    with contextlib.suppress(ConnectionError):
        await failed.run_agent_async(broken_clerk, "Find and store the orders of Globex")
    ids["failed"] = failed.execution_id
    paused = DurableExecution(storage, auto_cleanup=False)
    await paused.run_agent_async(banker, "Send 100 to bob")
    ids["paused"] = paused.execution_id
    return ids


if __name__ == "__main__":
    from perdure.storage import storage_from_url

    print(asyncio.run(populate(storage_from_url(sys.argv[1]))))


_NAMES = ("support", "reporter", "pipeline", "billing")
_ERRORS = (
    ("ConnectionError", "the east warehouse API is down"),
    ("pydantic_ai.exceptions.ModelHTTPError", "status_code: 429, model_name: gpt-4o-mini"),
    ("TimeoutError", "lookup took longer than 30 s"),
)


async def populate_history(storage: DurableExecutionStorage, count: int = 60) -> None:
    """`count` heads spread over the last day (no journal): the list page's counts and chart."""
    import random
    from datetime import timedelta

    from perdure.records import (
        ErrorInfo,
        ExecutionRecord,
        ExecutionStatus,
        TaskSnapshot,
        UsageTotals,
        new_execution_id,
        utcnow,
    )

    rng = random.Random(13)
    now = utcnow()
    weights = [ExecutionStatus.COMPLETED] * 7 + [ExecutionStatus.FAILED] * 2 + [ExecutionStatus.CANCELLED]
    for _ in range(count):
        created = now - timedelta(minutes=rng.uniform(30, 23.5 * 60))
        status = rng.choice(weights)
        error = None
        if status is ExecutionStatus.FAILED:
            kind, message = rng.choice(_ERRORS)
            error = ErrorInfo(type=kind, message=message)
        elif status is ExecutionStatus.CANCELLED:
            error = ErrorInfo(type="perdure.errors.ExecutionCancelled", message="cancelled by an operator")
        steps = rng.randint(2, 9)
        await storage.save_state_async(
            ExecutionRecord(
                execution_id=new_execution_id(created),
                status=status,
                created_at=created,
                updated_at=created + timedelta(seconds=rng.uniform(2, 90)),
                task=TaskSnapshot(description="a past run", agent_name=rng.choice(_NAMES)),
                step_index=steps - 1,
                step_name=rng.choice(["model_request", "tool:lookup", "tool:store"]),
                next_seq=steps,
                attempts=1 if status is not ExecutionStatus.FAILED else rng.randint(1, 3),
                usage=UsageTotals(requests=steps // 2, input_tokens=120 * steps, output_tokens=30 * steps),
                error=error,
            )
        )
