"""A `DurableAgent` with `checkpoint_every_n_steps=5` making 12 tool calls, for the batch crash test.

`python -c "from support import batch_app; batch_app.main(['start'|'resume', URL])"`; each tool run
appends `tool <n>` to the LEDGER file (fsync'd). The test kills it with `PERDURE_FAULT`.
"""

from __future__ import annotations

import asyncio
import os
import sys

from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure.durable import DurableAgent

CALLS = 12


def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    done = sum(1 for m in messages if isinstance(m, ModelResponse))
    if done < CALLS:
        return ModelResponse(parts=[ToolCallPart("work", {"n": done}, tool_call_id=f"w{done}")])
    return ModelResponse(parts=[TextPart(f"batched: {done} items")])


def work(n: int) -> int:
    """One unit of work with a side effect (a ledger line)."""
    with open(os.environ["LEDGER"], "a") as fh:
        fh.write(f"tool{n}\n")
        fh.flush()
        os.fsync(fh.fileno())
    return n


def main(argv: list[str]) -> int:
    _phase, url = argv
    agent = DurableAgent(
        FunctionModel(respond),
        backend=url,
        workflow_id="batch-1",
        checkpoint_every_n_steps=5,
        name="batcher",
        tools=[work],
    )
    result = asyncio.run(agent.run("work through the items"))
    print(result.output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
