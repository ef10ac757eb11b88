"""Workflows in one process: many agents and steps in one execution, replay by position, errors.

Crash tests with real SIGKILLs are in `test_workflow_crash.py`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import perdure
from perdure import DurableExecution, PerdureDurability, RetryPolicy, step, workflow
from perdure.errors import (
    JournalMismatchError,
    SerializationError,
    UnregisteredReferenceError,
    UserError,
)
from perdure.records import ExecutionStatus, StepKind
from perdure.storage import DurableExecutionStorage, InMemoryDurableStorage, SQLiteDurableStorage

COUNTS: Counter[str] = Counter()
FAIL: set[str] = set()


def _model(agent: str) -> FunctionModel:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        COUNTS[f"model {agent}"] += 1
        done = sum(1 for m in messages if isinstance(m, ModelResponse))
        if done < 2:  # two tool calls (the same call id in both agents: keys are scoped)
            call = ToolCallPart("lookup", {"q": f"{agent}-{done}"}, tool_call_id=f"c{done}")
            return ModelResponse(parts=[call])
        return ModelResponse(parts=[TextPart(f"{agent} done")])

    return FunctionModel(respond)


def lookup(q: str) -> str:
    """Look something up (counted)."""
    COUNTS[f"tool {q}"] += 1
    return f"found {q}"


planner = Agent(_model("planner"), name="planner", tools=[lookup], capabilities=[PerdureDurability()])
executor = Agent(_model("executor"), name="executor", tools=[lookup], capabilities=[PerdureDurability()])
reviewer = Agent(_model("reviewer"), name="reviewer", tools=[lookup], capabilities=[PerdureDurability()])


class Report(BaseModel):
    text: str
    words: int


class Progress(BaseModel):
    stage: str = "new"
    done: list[str] = []


@step
def save_research(text: str) -> Report:
    """A sync step with a side effect (counted); fails while `save` is in FAIL."""
    COUNTS["step save"] += 1
    if "save" in FAIL:
        raise RuntimeError("disk full")
    return Report(text=text, words=len(text.split()))


@step
async def inner(x: int) -> int:
    COUNTS["step inner"] += 1
    return x + 1


@step
async def outer(x: int) -> int:
    COUNTS["step outer"] += 1
    return await inner(x) * 10  # inside a step: part of `outer`, not journaled on its own


@workflow
async def pipeline(topic: str, *, rounds: int = 1) -> dict[str, Any]:
    """Three agents, typed steps, state, time and randomness in one execution."""
    progress = await perdure.state(Progress)
    plan = await planner.run(f"Plan: {topic}")
    progress.stage, progress.done = "planned", [*progress.done, "plan"]
    await perdure.save_state(progress)
    result = await executor.run(plan.output)
    report = await save_research(result.output)
    assert isinstance(report, Report)
    started = await perdure.now()
    luck = await perdure.random()
    review = await reviewer.run(report.text)
    nested = await outer(rounds)
    final = await perdure.state(Progress)
    return {
        "review": review.output,
        "words": report.words,
        "started": started.isoformat(),
        "luck": luck,
        "nested": nested,
        "stage": final.stage,
    }


@pytest.fixture(autouse=True)
def _reset() -> None:
    COUNTS.clear()
    FAIL.clear()


async def test_three_agents_one_execution_then_resume_after_a_failing_step(
    storage: DurableExecutionStorage,
) -> None:
    FAIL.add("save")
    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(RuntimeError, match="disk full"):
        await durable.run_workflow_async(pipeline, "solar", rounds=2)
    head = await storage.load_state_async(durable.execution_id)
    assert head is not None and head.status is ExecutionStatus.FAILED
    assert head.step_name == "step:save_research" and head.error is not None
    assert head.task.workflow == "pipeline"
    first = dict(COUNTS)
    assert first["model planner"] == 3 and first["model executor"] == 3 and "model reviewer" not in first
    journal = await storage.load_steps_async(durable.execution_id)
    keys = [s.key for s in journal]
    assert keys[0] == "w1" and journal[0].kind is StepKind.AGENT and journal[0].name == "agent:planner"
    assert "w1/tool:1/c0" in keys and "w3/tool:1/c0" in keys  # the same call id, one per agent scope

    FAIL.clear()
    COUNTS.clear()
    resumed = DurableExecution(storage, execution_id=durable.execution_id, auto_cleanup=False)
    output = await resumed.resume_workflow_async()  # found by its recorded name among registered ones
    assert output["review"] == "reviewer done" and output["words"] == 2 and output["nested"] == 30
    assert output["stage"] == "planned"
    # The finished agents and their tools did not run again; the failed step and the rest did.
    assert (
        Counter(
            {
                "step save": 1,
                "model reviewer": 3,
                "tool reviewer-0": 1,
                "tool reviewer-1": 1,
                "step outer": 1,
                "step inner": 1,
            }
        )
        == COUNTS
    )
    head = await storage.load_state_async(durable.execution_id)
    assert head is not None and head.status is ExecutionStatus.COMPLETED and head.output == output


async def test_now_and_random_replay_their_journaled_values(tmp_path: Any) -> None:
    storage = SQLiteDurableStorage(tmp_path / "wf.db")
    FAIL.add("save")

    @workflow(name="timed")
    async def timed() -> list[Any]:
        moment, luck = await perdure.now(), await perdure.random()
        await save_research("x y")
        return [moment.isoformat(), luck]

    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(RuntimeError):
        await durable.run_workflow_async(timed)
    journal = {s.name: s.result for s in await storage.load_steps_async(durable.execution_id)}
    FAIL.clear()
    await asyncio.sleep(0.01)
    output = await DurableExecution(
        storage, execution_id=durable.execution_id, auto_cleanup=False
    ).resume_workflow_async(timed)
    assert output == [journal["now"], journal["random"]]


async def test_replay_refuses_another_unit_at_a_journaled_position() -> None:
    storage = InMemoryDurableStorage()
    FAIL.add("save")

    @workflow(name="order")
    async def first_order() -> str:
        await outer(1)
        await save_research("a")
        return "ok"

    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(RuntimeError):
        await durable.run_workflow_async(first_order)
    before = await storage.load_state_async(durable.execution_id)

    @workflow(name="order")
    async def swapped() -> str:  # the same name, the units in another order
        await save_research("a")
        await outer(1)
        return "ok"

    FAIL.clear()
    with pytest.raises(JournalMismatchError) as info:
        await DurableExecution(storage, execution_id=durable.execution_id).resume_workflow_async(swapped)
    message = str(info.value)
    assert "step:outer" in message and "step:save_research" in message
    after = await storage.load_state_async(durable.execution_id)
    assert after is not None and before is not None
    assert after.status is before.status and after.next_seq == before.next_seq  # nothing recorded


async def test_resume_finds_only_registered_workflows() -> None:
    storage = InMemoryDurableStorage()
    FAIL.add("save")

    @workflow(name="wf-unregistered-later")
    async def flow() -> str:
        await save_research("a")
        return "ok"

    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(RuntimeError):
        await durable.run_workflow_async(flow)
    head = await storage.load_state_async(durable.execution_id)
    assert head is not None
    tampered = head.model_copy(update={"task": head.task.model_copy(update={"workflow": "os:system"})})
    await storage.save_state_async(tampered)
    with pytest.raises(UnregisteredReferenceError, match="os:system"):
        await DurableExecution(storage, execution_id=durable.execution_id).resume_workflow_async()

    @workflow(name="renamed")
    async def renamed() -> str:
        await save_research("a")
        return "ok"

    await storage.save_state_async(head)
    with pytest.raises(JournalMismatchError, match="renamed"):
        await DurableExecution(storage, execution_id=durable.execution_id).resume_workflow_async(renamed)
    FAIL.clear()
    done = await DurableExecution(storage, execution_id=durable.execution_id).resume_workflow_async(
        renamed, allow_changes={"workflow"}
    )
    assert done == "ok"


async def test_an_agent_execution_is_not_resumed_as_a_workflow() -> None:
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    await durable.run_agent_async(planner, "plan")
    durable2 = DurableExecution(storage, execution_id=durable.execution_id)
    with pytest.raises(UserError, match="not a workflow"):
        await durable2.resume_workflow_async()
    with pytest.raises(UserError, match="not a workflow"):
        await DurableExecution(storage).run_workflow_async(lookup, "x")  # type: ignore[arg-type]


async def test_step_retry_policy_journals_each_failed_try() -> None:
    tries: list[int] = []

    @step(retry=RetryPolicy(max_retries=2, retry_delay=0.01, jitter=0))
    async def flaky() -> int:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError("reset")
        return len(tries)

    @workflow(name="retrying")
    async def retrying() -> int:
        return await flaky()

    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    assert await durable.run_workflow_async(retrying) == 3
    kinds = [s.kind for s in await storage.load_steps_async(durable.execution_id)]
    assert kinds == [StepKind.ATTEMPT, StepKind.ATTEMPT, StepKind.STEP]


async def test_a_step_result_json_cannot_store_fails_naming_the_step() -> None:
    @step
    async def score() -> float:
        return math.nan

    @workflow(name="nan")
    async def nan_flow() -> float:
        return await score()

    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(SerializationError, match="step:score") as info:
        await durable.run_workflow_async(nan_flow)
    assert info.value.execution_id == durable.execution_id
    assert await storage.load_steps_async(durable.execution_id) == []


async def test_outside_an_execution_workflows_and_steps_are_plain_calls() -> None:
    assert await outer(1) == 20
    output = await pipeline("plain")
    assert output["review"] == "reviewer done" and output["stage"] == "new"  # no state outside a run
    assert COUNTS["step outer"] == 2


@workflow(name="sleeper")
async def sleeper(seconds: float) -> str:
    await perdure.sleep(seconds)
    return "awake"


async def _interrupted_sleep(storage: DurableExecutionStorage, seconds: float) -> tuple[str, datetime]:
    """Start `sleeper` and stop it during its sleep (the lease is released): its id and wake-up time."""
    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(durable.run_workflow_async(sleeper, seconds), 0.4)
    head = await storage.load_state_async(durable.execution_id)
    assert head is not None and head.wake_at is not None and head.status is ExecutionStatus.SUCCESS
    journaled = {s.name: s.result for s in await storage.load_steps_async(durable.execution_id)}
    assert datetime.fromisoformat(journaled["sleep"]) == head.wake_at
    slept = head.wake_at - head.created_at
    assert timedelta(seconds=seconds - 0.6) < slept < timedelta(seconds=seconds + 0.6)
    return durable.execution_id, head.wake_at


async def test_a_resumed_sleep_waits_only_what_is_left(tmp_path: Any) -> None:
    storage = SQLiteDurableStorage(tmp_path / "sleep.db")
    execution_id, wake_at = await _interrupted_sleep(storage, 2.0)
    start = time.monotonic()
    resumed = DurableExecution(storage, execution_id=execution_id, auto_cleanup=False)
    assert await resumed.resume_workflow_async() == "awake"
    waited = time.monotonic() - start
    assert waited < 1.9  # the rest of the sleep (about 1.6 s), not the whole 2 s again
    assert datetime.now(UTC) >= wake_at


async def test_workers_leave_a_sleeping_workflow_alone_until_it_is_due(tmp_path: Any) -> None:
    storage = SQLiteDurableStorage(tmp_path / "sleep.db")
    execution_id, wake_at = await _interrupted_sleep(storage, 1.2)
    early = await DurableExecution.recover_interrupted_async(storage, [sleeper], min_idle=0)
    assert "sleeping until" in early.skipped[execution_id]
    while datetime.now(UTC) < wake_at:
        await asyncio.sleep(0.05)
    report = await DurableExecution.recover_interrupted_async(storage, [sleeper], min_idle=0)
    assert report.recovered == [execution_id], report
    done = await storage.load_state_async(execution_id)
    assert done is not None and done.status is ExecutionStatus.COMPLETED and done.output == "awake"
    assert done.wake_at is None


def test_sync_twins_and_arguments_round_trip(tmp_path: Any) -> None:
    @workflow(name="typed-args")
    async def typed(report: Report, tags: list[str], *, limit: int = 3) -> str:
        assert isinstance(report, Report)
        return f"{report.text}:{','.join(tags)}:{limit}"

    storage = SQLiteDurableStorage(tmp_path / "twins.db")
    durable = DurableExecution(storage, auto_cleanup=False)
    assert durable.run_workflow(typed, Report(text="r", words=1), ["a", "b"], limit=5) == "r:a,b:5"
    head = storage.load_state(durable.execution_id)
    assert head is not None and head.task.workflow_args == {
        "arguments": {"report": {"text": "r", "words": 1}, "tags": ["a", "b"], "limit": 5}
    }
    with pytest.raises(UserError, match="cannot be called"):
        DurableExecution(storage).run_workflow(typed, "only one")


@step
async def summarize(text: str) -> str:
    """A step that runs an agent: the agent's units belong to the step."""
    summary = await reviewer.run(f"summarize {text}")
    if "summarize" in FAIL:
        raise RuntimeError("step failed after its agent ran")
    return summary.output


@workflow(name="agents-in-steps")
async def agents_in_steps() -> list[str]:
    first = await summarize("a")
    second = await summarize("b")  # the same agent, the same tool call ids: scoped apart
    return [first, second]


async def test_agents_inside_steps_are_scoped_under_the_step_and_replay() -> None:
    storage = InMemoryDurableStorage()
    FAIL.add("summarize")
    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(RuntimeError, match="after its agent"):
        await durable.run_workflow_async(agents_in_steps)
    keys = [s.key for s in await storage.load_steps_async(durable.execution_id)]
    assert keys[0] == "w1/reviewer#1/model#1" and "w1/reviewer#1/tool:1/c0" in keys
    assert COUNTS["model reviewer"] == 3
    FAIL.clear()
    COUNTS.clear()
    again = DurableExecution(storage, execution_id=durable.execution_id, auto_cleanup=False)
    assert await again.resume_workflow_async() == ["reviewer done", "reviewer done"]
    # The first step ran again, its agent replayed from the journal; the second step's agent ran live.
    assert COUNTS["model reviewer"] == 3 and COUNTS["tool reviewer-0"] == 1
    keys = [s.key for s in await storage.load_steps_async(durable.execution_id)]
    assert "w2/reviewer#1/model#1" in keys and keys.count("w1") == 1


async def test_an_agent_called_from_a_tool_does_not_collide_with_the_outer_run() -> None:
    async def delegate(task: str) -> str:
        """Ask the nested agent."""
        return (await executor.run(task)).output

    def outer_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        COUNTS["model outer"] += 1
        if sum(1 for m in messages if isinstance(m, ModelResponse)) == 0:
            return ModelResponse(parts=[ToolCallPart("delegate", {"task": "t"}, tool_call_id="c0")])
        return ModelResponse(parts=[TextPart("outer done")])

    outer = Agent(
        FunctionModel(outer_model), name="outer", tools=[delegate], capabilities=[PerdureDurability()]
    )
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    assert (await durable.run_agent_async(outer, "go")).output == "outer done"
    keys = [s.key for s in await storage.load_steps_async(durable.execution_id)]
    assert keys[:2] == ["model#1", "tool:1/c0/executor#1/model#1"] and "tool:1/c0" in keys
    assert COUNTS["model outer"] == 2 and COUNTS["model executor"] == 3


async def test_a_long_replay_that_never_waits_keeps_its_lease_alive() -> None:
    """Replayed units return at once (no await that yields): a long replay must not starve the heartbeat."""
    import threading

    @workflow(name="long-replay")
    async def long_replay() -> str:
        for _ in range(150):
            await perdure.now()
            time.sleep(0.008)  # the workflow's own blocking work between units: about 1.2 s in all
        await save_research("a b")
        return "done"

    storage = InMemoryDurableStorage()
    FAIL.add("save")
    first = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(RuntimeError):
        await first.run_workflow_async(long_replay)
    FAIL.clear()
    durable = DurableExecution(storage, execution_id=first.execution_id, auto_cleanup=False, lease_ttl=0.3)
    stolen: list[str] = []
    stop = threading.Event()

    def thief() -> None:  # another worker trying to take the execution over during the replay
        while not stop.is_set():  # first wait for the resume to hold the lease
            head = storage.load_state(durable.execution_id)
            if head is not None and head.lease_owner is not None:
                break
            time.sleep(0.01)
        while not stop.is_set():
            try:
                storage.acquire_lease(durable.execution_id, "thief", 5)
                stolen.append("taken")
                return
            except Exception:
                time.sleep(0.05)

    thread = threading.Thread(target=thief)
    thread.start()
    try:
        assert await durable.resume_workflow_async() == "done"
    finally:
        stop.set()
        thread.join()
    assert stolen == []
