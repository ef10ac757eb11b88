"""Type-checked (not run) by `mypy --strict` in `make test`: the public API's types as users see them."""

from __future__ import annotations

from typing import Any, assert_type

from pydantic import BaseModel
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.tools import DeferredToolRequests

import perdure
from perdure import Agent, AgentRunOutput, DurableExecution, Task, tool
from perdure.durable import AttemptResult, PerdureDurability, SQLiteDurableStorage
from perdure.errors import PerdureError
from perdure.records import ExecutionRecord


@perdure.register
class Report(BaseModel):
    title: str


@tool
def fetch(source: str) -> str:
    return source


async def engine_api() -> None:
    storage = SQLiteDurableStorage("typed.db")
    agent: PydanticAgent[None, Report] = PydanticAgent(
        "test", name="typed", output_type=Report, capabilities=[PerdureDurability()]
    )
    durable = DurableExecution(storage, auto_cleanup=False)
    attempt = await durable.run_agent_async(agent, "Write a report")
    assert_type(attempt, AttemptResult[Report])
    assert_type(attempt.output, Report)
    resumed = durable.resume_agent(agent, allow_changes={"instructions"})
    assert_type(resumed, AttemptResult[Report])
    assert_type(resumed.paused, bool)
    head = await durable.load_head_async()
    assert_type(head, ExecutionRecord)


def facade_api() -> None:
    assert_type(Report, type[Report])
    agent = Agent("perdure:scripted", name="typed", print=False)
    task = Task("fetch 'x'", tools=[fetch], response_format=Report)
    assert_type(task, Task[Report])
    assert_type(agent.do(task), Report | DeferredToolRequests)
    assert_type(agent.do(Task("plain text")), str | DeferredToolRequests)
    out = agent.do(task, return_output=True)
    assert_type(out, AgentRunOutput)
    run: AgentRunOutput | None = agent.last_run_output
    if run is not None:
        assert_type(run.is_complete, bool)
        assert_type(run.is_paused, bool)
        assert_type(run.is_error, bool)
        assert_type(run.pause_reason, str | None)
        assert_type(run.error_details, dict[str, Any] | None)
    del out


def errors_api(exc: PerdureError) -> None:
    assert_type(exc.execution_id, str | None)
