"""In-process events: `on_event`, `DurableExecution.events()`, `perdure.add_listener`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import DeferredToolRequests, Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import perdure
from perdure import DurableExecution, PerdureDurability, RetryPolicy
from perdure.events import (
    EVENT_ADAPTER,
    Event,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionResumed,
    ExecutionStarted,
    UnitCompleted,
    UnitReplayed,
    UnitStarted,
    _derive,
)
from perdure.storage import SQLiteDurableStorage
from support.stepper import BROKEN, RAN, stepper, tool_returns


@pytest.fixture(autouse=True)
def _reset() -> None:
    BROKEN.clear()
    RAN.clear()


def _agent(tools: int = 2) -> PydanticAgent[None, str]:
    return stepper(tools)


_tool_returns = tool_returns


def _kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


async def test_on_event_and_events_stream_see_every_unit_in_order(tmp_path: Path) -> None:
    seen: list[Event] = []
    durable = DurableExecution(SQLiteDurableStorage(tmp_path / "r.db"), on_event=seen.append)
    stream = durable.events()
    await durable.run_agent_async(_agent(), "go")
    streamed = [event async for event in stream]  # ends after execution_completed
    assert _kinds(seen) == _kinds(streamed)
    assert _kinds(seen) == [
        "execution_started",
        *["unit_started", "unit_completed"] * 5,  # model, step1, model, step2, model
        "execution_completed",
    ]
    units = [e for e in seen if isinstance(e, UnitCompleted)]
    assert [u.step_name for u in units] == [
        "model_request",
        "tool:step",
        "model_request",
        "tool:step",
        "model_request",
    ]
    assert [u.step_index for u in units] == [0, 1, 2, 3, 4]
    tool = units[1]
    assert tool.unit_kind == "tool_call" and tool.tool_name == "step" and tool.tool_call_id
    assert tool.replayed is False and tool.duration is not None and tool.duration >= 0
    assert units[0].input_tokens > 0 and units[0].output_tokens > 0
    started = [e for e in seen if isinstance(e, UnitStarted)]
    assert [s.unit_key for s in started] == [u.unit_key for u in units]
    assert all(e.execution_id == durable.execution_id and e.name == "stepper" for e in seen)
    end = seen[-1]
    assert isinstance(end, ExecutionCompleted)
    assert (
        end.requests == 3 and end.tool_calls == 2 and end.input_tokens == sum(u.input_tokens for u in units)
    )
    # every event serializes and reads back as the same typed model
    assert [EVENT_ADAPTER.validate_json(e.model_dump_json()) for e in seen] == seen


async def test_resume_replays_marked_events_then_runs_live(tmp_path: Path) -> None:
    storage = SQLiteDurableStorage(tmp_path / "r.db")
    BROKEN.add("step2")
    seen: list[Event] = []
    first = DurableExecution(storage, on_event=seen.append)
    with pytest.raises(RuntimeError):
        await first.run_agent_async(_agent(), "go")
    failed = seen[-1]
    assert isinstance(failed, ExecutionFailed)
    assert failed.error_type == "RuntimeError" and "step 2 is down" in (failed.error_message or "")
    assert seen[-2].kind == "unit_failed" and seen[-2].tool_name == "step"
    BROKEN.clear()
    RAN.clear()
    resumed: list[Event] = []
    second = DurableExecution(storage, execution_id=first.execution_id, on_event=resumed.append)
    await second.resume_agent_async(_agent())
    assert RAN == ["step2"]  # step 1 was not run again
    assert isinstance(resumed[0], ExecutionResumed) and resumed[0].attempt == 2
    replayed = [e for e in resumed if isinstance(e, UnitReplayed)]
    assert [r.step_name for r in replayed] == ["model_request", "tool:step", "model_request"]
    assert all(r.replayed for r in replayed)
    live = [e for e in resumed if isinstance(e, UnitCompleted)]
    assert [u.step_name for u in live] == ["tool:step", "model_request"]
    assert not any(u.replayed for u in live)
    # every replayed event comes before the first live one
    assert max(resumed.index(r) for r in replayed) < min(resumed.index(u) for u in live)


async def test_retries_are_events(tmp_path: Path) -> None:
    fails = {"left": 2}

    def flaky(n: int) -> str:
        if fails["left"]:
            fails["left"] -= 1
            raise ConnectionError("flaky")
        return "ok"

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if _tool_returns(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("flaky", {"n": 1})])
        return ModelResponse(parts=[TextPart("done")])

    policy = RetryPolicy(max_retries=2, retry_delay=0.001, jitter=0.0, retry_on_errors=(ConnectionError,))
    agent = PydanticAgent(
        FunctionModel(respond),
        name="flaky-agent",
        tools=[Tool(flaky)],
        capabilities=[PerdureDurability(tool_retry=policy)],
    )
    seen: list[Event] = []
    await DurableExecution(SQLiteDurableStorage(tmp_path / "r.db"), on_event=seen.append).run_agent_async(
        agent, "go"
    )
    retried = [e for e in seen if e.kind == "unit_retried"]
    assert [r.attempt for r in retried] == [1, 2]
    assert all(r.error_type == "ConnectionError" and r.tool_name == "flaky" for r in retried)
    done = next(e for e in seen if e.kind == "unit_completed" and e.step_name == "tool:flaky")
    assert done.attempt == 3 and done.unit_key == retried[0].unit_key


async def test_paused_event_names_the_calls_waiting(tmp_path: Path) -> None:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if _tool_returns(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("wire", {"amount": 5}, tool_call_id="c1")])
        return ModelResponse(parts=[TextPart("sent")])

    def wire(amount: int) -> str:
        return f"wired {amount}"

    agent = PydanticAgent(
        FunctionModel(respond),
        name="payer",
        output_type=[str, DeferredToolRequests],
        tools=[Tool(wire, requires_approval=True)],
        capabilities=[PerdureDurability()],
    )
    seen: list[Event] = []
    durable = DurableExecution(SQLiteDurableStorage(tmp_path / "r.db"), on_event=seen.append)
    await durable.run_agent_async(agent, "pay")
    paused = seen[-1]
    assert paused.kind == "execution_paused"
    assert paused.pending_kind == "approval"  # type: ignore[attr-defined]
    assert paused.pending_calls == [{"tool_call_id": "c1", "tool_name": "wire"}]  # type: ignore[attr-defined]


async def test_workflow_steps_are_events(tmp_path: Path) -> None:
    @perdure.step
    async def fetch(n: int) -> int:
        return n * 2

    @perdure.workflow(name="events-doubler", steps=2)
    async def doubler(n: int) -> int:
        return await fetch(n) + await fetch(n + 1)

    seen: list[Event] = []
    durable = DurableExecution(SQLiteDurableStorage(tmp_path / "r.db"), on_event=seen.append)
    assert await durable.run_workflow_async(doubler, 3) == 14
    units = [e for e in seen if e.kind == "unit_completed"]
    assert [(u.unit_kind, u.step_name) for u in units] == [("step", "step:fetch"), ("step", "step:fetch")]
    assert isinstance(seen[0], ExecutionStarted) and seen[0].name == "events-doubler"
    assert seen[-1].kind == "execution_completed"


async def test_a_failing_listener_is_logged_once_and_never_breaks_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls = {"n": 0}

    def broken(event: Event) -> None:
        calls["n"] += 1
        raise ValueError("listener bug")

    async def broken_async(event: Event) -> None:
        raise KeyError("async listener bug")

    durable = DurableExecution(SQLiteDurableStorage(tmp_path / "r.db"), on_event=broken)
    durable.event_bus.subscribe(broken_async)
    with caplog.at_level(logging.ERROR, logger="perdure"):
        result = await durable.run_agent_async(_agent(), "go")
        await asyncio.sleep(0.01)  # let the scheduled async listener calls finish
    assert result.output == "did 2"
    assert calls["n"] == 12  # every event reached it
    messages = [r.getMessage() for r in caplog.records]
    assert sum("listener" in m and "broken" in m and "broken_async" not in m for m in messages) == 1
    assert sum("broken_async" in m for m in messages) == 1


async def test_global_listener_sees_every_execution_and_unsubscribes(tmp_path: Path) -> None:
    seen: list[Event] = []
    stop = perdure.add_listener(seen.append)
    try:
        storage = SQLiteDurableStorage(tmp_path / "r.db")
        a = DurableExecution(storage)
        b = DurableExecution(storage)
        await a.run_agent_async(_agent(1), "a")
        await b.run_agent_async(_agent(1), "b")
    finally:
        stop()
    assert {e.execution_id for e in seen} == {a.execution_id, b.execution_id}
    count = len(seen)
    await DurableExecution(storage).run_agent_async(_agent(1), "c")
    assert len(seen) == count


async def test_no_listener_no_event_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an event was built although nobody listens")

    for name in (
        "unit_done",
        "unit_started",
        "unit_failed",
        "unit_retried",
        "attempt_started",
        "execution_ended",
    ):
        monkeypatch.setattr(_derive, name, forbidden)
    result = await DurableExecution(SQLiteDurableStorage(tmp_path / "r.db")).run_agent_async(_agent(), "go")
    assert result.output == "did 2"


async def test_events_stream_follow_keeps_listening_across_attempts(tmp_path: Path) -> None:
    storage = SQLiteDurableStorage(tmp_path / "r.db")
    BROKEN.add("step1")
    durable = DurableExecution(storage, auto_cleanup=False)
    received: list[Event] = []

    stream = durable.events(follow=True)  # listening starts here, before the run

    async def consume() -> None:
        async for event in stream:
            received.append(event)
            if event.kind == "execution_completed":
                return

    consumer = asyncio.create_task(consume())
    with pytest.raises(RuntimeError):
        await durable.run_agent_async(_agent(1), "go")
    BROKEN.clear()
    await durable.resume_agent_async(_agent(1))
    await asyncio.wait_for(consumer, 5)
    kinds = _kinds(received)
    assert kinds[0] == "execution_started" and "execution_failed" in kinds
    assert "execution_resumed" in kinds and kinds[-1] == "execution_completed"
