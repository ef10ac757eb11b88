"""Real executions for the `perdure list/show/steps/output` tests: every shape an operator inspects.

`populate(storage)` runs, with pydantic-ai `FunctionModel` agents under `PerdureDurability`:

- `done`: an agent (`clerk`) that calls `lookup` then `store` and answers, completed;
- `failed`: the same agent whose `store` always raises under a `RetryPolicy` (3 tries): failed,
  with two `attempt` entries carrying the errors of the retried tries;
- `paused`: an agent whose `transfer` tool requires approval: paused, waiting for it;
- `rewound`: a completed run rewound to its first tool call and resumed (superseded entries, a
  `rewind` entry);
- `workflow`: the workflow `inspect-pipeline`, a step and a nested agent run (agent marker entry).

It returns the execution ids by those names. `python -m support.inspect_app URL` fills a storage for
reading the output by hand.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from pydantic_ai import Agent, Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import DeferredToolRequests

from perdure import DurableExecution, PerdureDurability, RetryPolicy, step, workflow
from perdure.storage import DurableExecutionStorage

__all__ = ["clerk", "populate"]

LONG_QUERY = "the customer's last three orders, with totals " * 3


def _responses(messages: list[ModelMessage]) -> int:
    return sum(1 for m in messages if isinstance(m, ModelResponse))


def _clerk_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    done = _responses(messages)
    if done == 0:
        return ModelResponse(parts=[ToolCallPart("lookup", {"query": LONG_QUERY}, tool_call_id="c-lookup")])
    if done == 1:
        return ModelResponse(parts=[ToolCallPart("store", {"key": "orders"}, tool_call_id="c-store")])
    return ModelResponse(parts=[TextPart("Stored the orders: 3 found, total 120.50 EUR.")])


def lookup(query: str) -> dict[str, Any]:
    """Look something up."""
    return {"query": query[:20], "orders": [{"id": 1, "total": 40.5}, {"id": 2, "total": 80}]}


BROKEN: set[str] = set()


def store(key: str) -> str:
    """Store something."""
    if "store" in BROKEN:
        raise ConnectionError(f"cannot store {key}: connection reset by peer")
    return f"stored {key}"


def clerk(*, retry: RetryPolicy | None = None) -> Agent[None, str]:
    """The agent `clerk`: `lookup`, then `store` (with `retry`), then a text answer."""
    store_tool = Tool(store, metadata={"perdure": {"retry": retry}} if retry else None)
    return Agent(
        FunctionModel(_clerk_model),
        name="clerk",
        tools=[lookup, store_tool],
        capabilities=[PerdureDurability()],
    )


def _banker_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if _responses(messages) == 0:
        args = {"amount": 100, "to": "bob"}
        return ModelResponse(parts=[ToolCallPart("transfer", args, tool_call_id="c-transfer")])
    return ModelResponse(parts=[TextPart("transferred")])


def transfer(amount: int, to: str) -> str:
    """Transfer money (needs a human's approval)."""
    return f"sent {amount} to {to}"


banker: Agent[None, str | DeferredToolRequests] = Agent(
    FunctionModel(_banker_model),
    name="banker",
    tools=[Tool(transfer, requires_approval=True)],
    output_type=[str, DeferredToolRequests],
    capabilities=[PerdureDurability()],
)


@step
async def fetch_topic(topic: str) -> dict[str, Any]:
    """A workflow step with a JSON result."""
    return {"topic": topic, "sources": 3}


@workflow(name="inspect-pipeline")
async def pipeline(topic: str) -> str:
    """A step, then the `clerk` agent inside the workflow."""
    fetched = await fetch_topic(topic)
    answer = await clerk().run(f"research {fetched['topic']}")
    return answer.output


async def populate(storage: DurableExecutionStorage) -> dict[str, str]:
    """Run every shape once in `storage`; the execution ids by name (see the module doc)."""
    ids: dict[str, str] = {}

    done = DurableExecution(storage, auto_cleanup=False)
    await done.run_agent_async(clerk(), "find the orders")
    ids["done"] = done.execution_id

    failed = DurableExecution(storage, auto_cleanup=False)
    BROKEN.add("store")
    try:
        await failed.run_agent_async(clerk(retry=RetryPolicy(max_retries=2, retry_delay=0, jitter=0)), "go")
    except ConnectionError:
        pass
    finally:
        BROKEN.discard("store")
    ids["failed"] = failed.execution_id

    paused = DurableExecution(storage, auto_cleanup=False)
    await paused.run_agent_async(banker, "pay bob 100")
    ids["paused"] = paused.execution_id

    rewound = DurableExecution(storage, auto_cleanup=False)
    await rewound.run_agent_async(clerk(), "find the orders")
    journal = await storage.load_steps_async(rewound.execution_id)
    first_tool = next(s.seq for s in journal if s.name.startswith("tool:"))
    await DurableExecution.rewind_async(rewound.execution_id, storage, to_step=first_tool)
    again = DurableExecution(storage, execution_id=rewound.execution_id, auto_cleanup=False)
    await again.resume_agent_async(clerk())
    ids["rewound"] = rewound.execution_id

    flow = DurableExecution(storage, auto_cleanup=False)
    await flow.run_workflow_async(pipeline, "orders")
    ids["workflow"] = flow.execution_id
    return ids


if __name__ == "__main__":  # pragma: no cover - a manual aid
    from perdure.storage import storage_from_url

    async def _main(url: str) -> None:
        target = storage_from_url(url)
        try:
            print(await populate(target))
        finally:
            await target.close_async()

    asyncio.run(_main(sys.argv[1]))
