"""A durable agent run in its own process, watched from the test process (`tests/events/test_watch.py`).

`python -m support.watch_app URL EXECUTION_ID TOOLS DELAY [fail]` runs an agent whose model calls the
tool `work` TOOLS times, one call per response, each call sleeping DELAY seconds, then answers. With
`fail` the last call raises, so the execution ends `failed`. Records are kept (`auto_cleanup=False`)
so the watcher sees `execution_completed`.
"""

from __future__ import annotations

import asyncio
import sys

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure import DurableExecution
from perdure.durable import PerdureDurability
from perdure.storage import storage_from_url


def build(tools: int, delay: float, fail: bool) -> PydanticAgent[None, str]:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = sum(1 for m in messages for p in getattr(m, "parts", ()) if isinstance(p, ToolReturnPart))
        if done < tools:
            return ModelResponse(parts=[ToolCallPart("work", {"n": done + 1})])
        return ModelResponse(parts=[TextPart(f"did {done}")])

    agent = PydanticAgent(FunctionModel(respond), name="watched", capabilities=[PerdureDurability()])

    @agent.tool_plain
    async def work(n: int) -> str:
        await asyncio.sleep(delay)
        if fail and n == tools:
            raise RuntimeError(f"work {n} broke")
        return f"work {n} done"

    return agent


async def run(url: str, execution_id: str, tools: int, delay: float, fail: bool) -> None:
    storage = storage_from_url(url)
    try:
        durable = DurableExecution(storage, execution_id=execution_id, auto_cleanup=False)
        await durable.run_agent_async(build(tools, delay, fail), "work please")
    finally:
        await storage.close_async()


def main(argv: list[str]) -> int:
    url, execution_id, tools, delay = argv[:4]
    fail = len(argv) > 4 and argv[4] == "fail"
    try:
        asyncio.run(run(url, execution_id, int(tools), float(delay), fail))
    except RuntimeError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
