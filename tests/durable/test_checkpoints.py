"""Checkpoints, forks and rewinds: on every backend, counting what runs again."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure import DurableExecution, PerdureDurability, create_checkpoint, step, workflow
from perdure.errors import CheckpointNotFoundError, ExecutionLeasedError, UserError
from perdure.records import ExecutionStatus, StepKind
from perdure.storage import DurableExecutionStorage, InMemoryDurableStorage

RAN: Counter[str] = Counter()


def _model(label: str, calls: int) -> FunctionModel:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        RAN[f"model {label}"] += 1
        done = sum(1 for m in messages if isinstance(m, ModelResponse))
        if done < calls:
            return ModelResponse(parts=[ToolCallPart("act", {"n": done}, tool_call_id=f"c{done}")])
        return ModelResponse(parts=[TextPart(f"{label}: {done} acts")])

    return FunctionModel(respond)


def act(n: int) -> int:
    """Do something (counted)."""
    RAN[f"act {n}"] += 1
    return n * 2


agent = Agent(_model("agent", 3), name="cp-agent", tools=[act], capabilities=[PerdureDurability()])
second = Agent(_model("second", 1), name="cp-second", tools=[act], capabilities=[PerdureDurability()])
other_model = Agent(_model("other", 3), name="cp-agent", tools=[act], capabilities=[PerdureDurability()])


@step
async def record(text: str) -> str:
    RAN["step record"] += 1
    return text.upper()


@workflow(name="cp-workflow")
async def cp_workflow(topic: str) -> str:
    first = await agent.run(f"do {topic}")
    point = await create_checkpoint("after the first agent", state={"topic": topic})
    assert point.kind == "manual"
    shouted = await record(first.output)
    final = await second.run(shouted)
    return final.output


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()


async def test_checkpoints_list_every_unit_and_manual_ones(storage: DurableExecutionStorage) -> None:
    durable = DurableExecution(storage, auto_cleanup=False)
    assert await durable.run_workflow_async(cp_workflow, "x") == "second: 1 acts"
    points = await durable.list_checkpoints_async()
    kinds = [p.kind for p in points]
    assert kinds.count("model_request") == 6 and kinds.count("tool_call") == 4
    [manual] = [p for p in points if p.kind == "manual"]
    assert manual.description == "after the first agent" and manual.state == {"topic": "x"}
    assert manual.id == f"{durable.execution_id}@{manual.step_index}"
    assert (await DurableExecution.list_checkpoints_async(durable.execution_id, storage)) == points
    latest = DurableExecution.get_latest_checkpoint(durable.execution_id, storage)
    assert latest == points[-1] and latest.step_name == "model_request"
    assert DurableExecution.get_checkpoint(manual.id, storage) == manual
    with pytest.raises(CheckpointNotFoundError):
        DurableExecution.get_checkpoint(f"{durable.execution_id}@999", storage)
    with pytest.raises(UserError, match="not a manual"):
        DurableExecution.delete_checkpoint(points[0].id, storage)
    assert DurableExecution.delete_checkpoint(manual.id, storage) is True
    assert DurableExecution.delete_checkpoint(manual.id, storage) is False
    assert manual.id not in [p.id for p in DurableExecution.list_checkpoints(durable.execution_id, storage)]
    assert len(await storage.load_steps_async(durable.execution_id)) == len(points) + 2  # 2 agent markers


async def test_fork_replays_the_prefix_and_runs_the_rest_live(storage: DurableExecutionStorage) -> None:
    durable = DurableExecution(storage, auto_cleanup=False)
    await durable.run_workflow_async(cp_workflow, "x")
    manual = next(p for p in await durable.list_checkpoints_async() if p.kind == "manual")
    RAN.clear()
    fork_id = await DurableExecution.fork_async(durable.execution_id, storage, at_checkpoint=manual.id)
    head = await storage.load_state_async(fork_id)
    assert head is not None and head.parent_id == durable.execution_id and head.forked_at == manual.step_index
    assert head.status is ExecutionStatus.SUCCESS and head.next_seq == manual.step_index + 1
    assert head.usage.requests == 4 and head.usage.tool_calls == 3
    assert Counter() == RAN  # forking runs nothing
    output = await DurableExecution(storage, execution_id=fork_id, auto_cleanup=False).resume_workflow_async()
    assert output == "second: 1 acts"
    assert Counter({"step record": 1, "model second": 2, "act 0": 1}) == RAN  # only after the fork point
    parent = await storage.load_state_async(durable.execution_id)
    assert parent is not None and parent.status is ExecutionStatus.COMPLETED  # untouched


async def test_a_fork_may_resume_with_another_model() -> None:
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    await durable.run_agent_async(agent, "go")
    calls = [p for p in await durable.list_checkpoints_async() if p.kind == "tool_call"]
    fork_id = DurableExecution.fork(durable.execution_id, storage, at_step=calls[0].step_index)
    RAN.clear()
    done = await DurableExecution(storage, execution_id=fork_id, auto_cleanup=False).resume_agent_async(
        other_model
    )
    assert done.output == "other: 3 acts"
    assert RAN["act 0"] == 0 and RAN["act 1"] == 1 and RAN["model other"] == 3


async def test_rewind_continues_the_same_execution_keeping_history(storage: DurableExecutionStorage) -> None:
    durable = DurableExecution(storage, auto_cleanup=False)
    await durable.run_workflow_async(cp_workflow, "x")
    before = await storage.load_steps_async(durable.execution_id)
    RAN.clear()
    kept = await DurableExecution.rewind_async(durable.execution_id, storage, to_node="step:record")
    assert before[kept + 1].name == "step:record"
    head = await storage.load_state_async(durable.execution_id)
    assert head is not None and head.status is ExecutionStatus.SUCCESS and head.output is None
    again = DurableExecution(storage, execution_id=durable.execution_id, auto_cleanup=False)
    assert await again.resume_workflow_async() == "second: 1 acts"
    assert Counter({"step record": 1, "model second": 2, "act 0": 1}) == RAN
    journal = await storage.load_steps_async(durable.execution_id)
    assert journal[: len(before)] == before  # nothing rewritten, nothing deleted
    assert journal[len(before)].kind is StepKind.REWIND
    every = await again.list_checkpoints_async(include_superseded=True)
    superseded = [p for p in every if p.status == "superseded"]
    assert superseded[0].step_name == "step:record" and len(superseded) == 4
    assert len(await again.list_checkpoints_async()) == len(every) - len(superseded)


async def test_rewind_to_a_step_and_to_the_start() -> None:
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    await durable.run_agent_async(agent, "go")
    assert DurableExecution.rewind(durable.execution_id, storage, to_step=-1) == -1
    RAN.clear()
    again = DurableExecution(storage, execution_id=durable.execution_id, auto_cleanup=False)
    assert (await again.resume_agent_async(agent)).output == "agent: 3 acts"
    assert RAN["model agent"] == 4 and RAN["act 2"] == 1  # everything ran again, once
    with pytest.raises(CheckpointNotFoundError):
        DurableExecution.rewind(durable.execution_id, storage, to_step=10_000)
    with pytest.raises(CheckpointNotFoundError, match="tool:nope"):
        DurableExecution.rewind(durable.execution_id, storage, to_node="tool:nope")
    with pytest.raises(UserError, match="exactly one"):
        DurableExecution.rewind(durable.execution_id, storage)


async def test_time_travel_refuses_a_running_execution_and_bad_ids() -> None:
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    await durable.run_agent_async(agent, "go")
    await storage.acquire_lease_async(durable.execution_id, "someone-else", 30)
    with pytest.raises(ExecutionLeasedError):
        DurableExecution.rewind(durable.execution_id, storage, to_step=1)
    with pytest.raises(UserError, match="checkpoint id"):
        DurableExecution.get_checkpoint("no-at-sign", storage)
    with pytest.raises(UserError, match="belongs to execution"):
        DurableExecution.fork(durable.execution_id, storage, at_checkpoint="other@1")
    with pytest.raises(UserError, match="inside a running execution"):
        await create_checkpoint("outside")


async def test_checkpoints_inside_a_tool_replay_without_duplicates() -> None:
    made: list[Any] = []

    async def mark(n: int) -> str:
        """Create a checkpoint from inside a tool."""
        made.append(await create_checkpoint(f"tool {n}", state={"n": n}))
        if n == 0 and len(made) == 1:
            raise ConnectionError("flaky")  # the run fails after the checkpoint was journaled
        return "marked"

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if sum(1 for m in messages if isinstance(m, ModelResponse)) == 0:
            return ModelResponse(parts=[ToolCallPart("mark", {"n": 0}, tool_call_id="m0")])
        return ModelResponse(parts=[TextPart("done")])

    marker = Agent(FunctionModel(respond), name="marker", tools=[mark], capabilities=[PerdureDurability()])
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(ConnectionError):
        await durable.run_agent_async(marker, "go")
    await DurableExecution(storage, execution_id=durable.execution_id, auto_cleanup=False).resume_agent_async(
        marker
    )
    manual = [
        p for p in DurableExecution.list_checkpoints(durable.execution_id, storage) if p.kind == "manual"
    ]
    # The tool ran twice (its first try failed after the checkpoint was journaled): the second try got
    # the journaled checkpoint back instead of writing another one.
    assert [p.description for p in manual] == ["tool 0"]
    assert len(made) == 2 and made[0] == made[1] == manual[0]


async def test_resume_tokens_name_an_execution_any_process_can_resume(
    storage: DurableExecutionStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime, timedelta

    from perdure._tokens import create_resume_token
    from perdure.errors import InvalidResumeTokenError

    monkeypatch.setenv("PERDURE_SECRET_KEY", "k" * 32)
    STOP.add("record")
    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(RuntimeError, match="stop"):
        await durable.run_workflow_async(cp_stops_once, "x")
    manual = next(p for p in await durable.list_checkpoints_async() if p.kind == "manual")
    token = manual.create_resume_token(expires_in=600)
    assert token == token.strip() and "=" not in token and len(token) < 200
    assert DurableExecution.resume_token(durable.execution_id, at=manual.id, expires_in=600)

    def flipped(text: str) -> str:
        middle = len(text) // 2
        return text[:middle] + ("A" if text[middle] != "A" else "B") + text[middle + 1 :]

    RAN.clear()
    past = datetime.now(UTC) - timedelta(days=2)
    expired = create_resume_token(durable.execution_id, expires_in=60, now=past)
    for bad, key in ((flipped(token), None), (token, "another-key-of-16+bytes"), (expired, None)):
        with pytest.raises(InvalidResumeTokenError):
            DurableExecution.from_resume_token(bad, storage, key=key)
    assert Counter() == RAN  # nothing ran for a bad token
    STOP.clear()
    resumed = DurableExecution.from_resume_token(token, storage, auto_cleanup=False)
    assert resumed.execution_id == durable.execution_id
    assert await resumed.resume_workflow_async() == "second: 1 acts"
    assert RAN["model agent"] == 0 and RAN["step record"] == 1
    monkeypatch.delenv("PERDURE_SECRET_KEY")
    with pytest.raises(UserError, match="PERDURE_SECRET_KEY"):
        DurableExecution.resume_token(durable.execution_id)


STOP: set[str] = set()


@step
async def stop_once(text: str) -> str:
    if "record" in STOP:
        raise RuntimeError("stop here once")
    return text


@workflow(name="cp-stops-once")
async def cp_stops_once(topic: str) -> str:
    first = await agent.run(f"do {topic}")
    await create_checkpoint("after the first agent")
    shouted = await record(await stop_once(first.output))
    return (await second.run(shouted)).output


async def test_the_seed_backend_methods_work_on_every_storage(storage: DurableExecutionStorage) -> None:
    from perdure import Checkpoint

    durable = DurableExecution(storage, auto_cleanup=False)
    await durable.run_agent_async(agent, "go")
    eid = durable.execution_id
    seed = Checkpoint(agent_state={"step": 3}, message_history=[{"role": "user"}], metadata={"phase": "x"})
    saved = await storage.save_checkpoint_async(eid, seed)
    assert saved in await storage.list_checkpoints_async(eid)
    loaded = await storage.load_checkpoint_async(saved)
    assert loaded is not None and loaded.agent_state == {"step": 3} and loaded.metadata == {"phase": "x"}
    assert loaded.message_history == [{"role": "user"}]
    assert await storage.load_checkpoint_async(f"{eid}@999") is None
    assert storage.delete_checkpoints(eid) == 1
    assert storage.load_checkpoint(saved) is None
    RAN.clear()  # the run's journal is untouched: a resume of the completed run is refused, not re-run
    assert storage.list_checkpoints(eid) == [p.id for p in await durable.list_checkpoints_async()]
