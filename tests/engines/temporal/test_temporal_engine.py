"""The Temporal engine against a real dev server: runs, approvals, cancel, statuses, errors.

The agents (`support.temporal_app`) carry only `PerdureDurability()`; `PERDURE_ENGINE=temporal`
makes them Temporal agents. Counts come from the ledger/requests files the tools and models write.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

from perdure.durable.capability import PerdureDurability
from perdure.durable.execution import DurableExecution
from perdure.engines import EngineOptions, forget_engines, get_engine
from perdure.errors import ExecutionConflictError, ExecutionNotFoundError, UserError
from perdure.records import ExecutionStatus
from support.temporal_server import free_port, lines, require_temporalio

require_temporalio()  # before anything imports temporalio

from perdure.engines.temporal import TemporalEngine  # noqa: E402


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _activity_types(engine: TemporalEngine, execution_id: str) -> list[str]:
    """Names of the activities the workflow scheduled, from its Temporal history."""
    history = await (await engine.client()).get_workflow_handle(execution_id).fetch_history()
    return [
        event.activity_task_scheduled_event_attributes.activity_type.name
        for event in history.events
        if event.HasField("activity_task_scheduled_event_attributes")
    ]


async def _wait_for_line(path: Path, line: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while line not in lines(path):
        assert asyncio.get_running_loop().time() < deadline, f"{line!r} never appeared in {path}"
        await asyncio.sleep(0.02)


async def test_agent_with_perdure_durability_runs_as_workflow_with_activities(
    app: ModuleType, engine: TemporalEngine, files: dict[str, Path]
) -> None:
    execution = DurableExecution(engine="temporal", execution_id=_id("basic"))
    run = await execution.run_agent_async(app.basic, "add two and three")

    assert run.status is ExecutionStatus.COMPLETED and run.completed
    assert run.output == "5"
    assert lines(files["ledger"]) == ["add 2 3"]
    assert lines(files["requests"]) == ["basic request 0", "basic request 1"]
    activities = await _activity_types(engine, execution.execution_id)
    # the tool call and both model requests were activities of the agent's
    model, tool = "agent__basic__model_request", "agent__basic__toolset__<agent>__call_tool"
    assert activities == [model, tool, model]

    again = await execution.run_agent_async(app.basic, "add two and three")  # joins, never re-runs
    assert again.output == "5"
    assert lines(files["ledger"]) == ["add 2 3"]
    assert len(lines(files["requests"])) == 2


async def test_approve_with_edited_args_continues_the_paused_run(
    app: ModuleType, engine: TemporalEngine, files: dict[str, Path]
) -> None:
    execution = DurableExecution(engine="temporal", execution_id=_id("approve"))
    paused = await execution.run_agent_async(app.approval, "pay")

    assert paused.status is ExecutionStatus.PAUSED and paused.paused
    assert [(c.tool_call_id, c.tool_name, c.args) for c in paused.pending] == [
        ("approval-call", "transfer", {"amount": 100})
    ]
    assert [c.tool_call_id for c in paused.output.approvals] == ["approval-call"]
    assert lines(files["ledger"]) == []  # nothing ran before the decision
    info = await engine.describe(execution.execution_id)
    assert info is not None and info["status"] == "paused"
    assert info["pending"]["calls"][0]["tool_name"] == "transfer"

    with pytest.raises(ExecutionConflictError, match="no pending call 'nope'"):
        await engine.approve(execution.execution_id, "nope")

    done = await execution.resume_agent_async(app.approval, approvals={"approval-call": {"amount": 5}})
    assert done.status is ExecutionStatus.COMPLETED
    assert done.output == "sent 5"
    assert lines(files["ledger"]) == ["transfer 5"]

    with pytest.raises(ExecutionConflictError, match="closed"):
        await engine.approve(execution.execution_id, "approval-call")


async def test_deny_tells_the_model_and_never_runs_the_tool(
    app: ModuleType, engine: TemporalEngine, files: dict[str, Path]
) -> None:
    execution = DurableExecution(engine="temporal", execution_id=_id("deny"))
    paused = await execution.run_agent_async(app.approval, "pay")
    assert paused.paused

    await engine.deny(execution.execution_id, "approval-call", message="over budget")
    done = await engine.result(execution.execution_id)

    assert done.status is ExecutionStatus.COMPLETED
    assert "over budget" in done.output
    assert lines(files["ledger"]) == []


async def test_cancel_a_running_and_a_paused_run(
    app: ModuleType, engine: TemporalEngine, files: dict[str, Path]
) -> None:
    running = _id("cancel-running")
    await engine.start_agent(app.slow, "sleep", execution_id=running)
    await _wait_for_line(files["ledger"], "wait started")
    await engine.cancel(running, reason="test")
    cancelled = await engine.result(running)
    assert cancelled.status is ExecutionStatus.CANCELLED

    paused = _id("cancel-paused")
    assert (await engine.run_agent(app.approval, "pay", execution_id=paused)).paused
    await engine.cancel(paused)
    assert (await engine.result(paused)).status is ExecutionStatus.CANCELLED
    assert lines(files["ledger"]) == ["wait started"]  # the slow tool ran once; the paused one never

    with pytest.raises(ExecutionConflictError, match="already closed"):
        await engine.cancel(paused)


async def test_describe_and_list_map_temporal_statuses(
    app: ModuleType, engine: TemporalEngine, files: dict[str, Path]
) -> None:
    completed, failed, paused, cancelled = (_id(kind) for kind in ("done", "failed", "paused", "cancelled"))
    assert (await engine.run_agent(app.basic, "add", execution_id=completed)).completed
    failure = await engine.run_agent(app.failing, "explode", execution_id=failed)
    assert failure.status is ExecutionStatus.FAILED
    assert failure.error is not None and "boom" in failure.error
    assert lines(files["ledger"]).count("explode") == 2  # RetryPolicy(max_retries=1) -> 2 attempts
    assert (await engine.run_agent(app.approval, "pay", execution_id=paused)).paused
    await engine.start_agent(app.slow, "sleep", execution_id=cancelled)
    await engine.cancel(cancelled)
    assert (await engine.result(cancelled)).status is ExecutionStatus.CANCELLED

    expected = {completed: "completed", failed: "failed", paused: "paused", cancelled: "cancelled"}
    agents = {completed: "basic", failed: "failing", paused: "approval", cancelled: "slow"}
    for execution_id, status in expected.items():
        info = await engine.describe(execution_id)
        assert info is not None
        assert info["execution_id"] == execution_id and info["status"] == status
        assert info["created_at"] and info["updated_at"] and info["timestamp"] == info["updated_at"]
        assert info["metadata"]["temporal"]["workflow_type"] == "perdure.agent"
        assert info["agent_name"] == agents[execution_id]
    described = await engine.describe(failed)
    assert described is not None and "boom" in described["error"]
    described = await engine.describe(completed)
    assert described is not None and described["output"] == "5"
    assert await engine.describe(_id("unknown")) is None

    listed = {row["execution_id"]: row["status"] for row in await engine.list()}
    assert {key: listed.get(key) for key in expected} == expected
    for status in ("completed", "failed", "paused", "cancelled"):
        ours = [
            row["execution_id"] for row in await engine.list(status=status) if row["execution_id"] in expected
        ]
        assert ours == [key for key, value in expected.items() if value == status]
    assert len(await engine.list(limit=2)) == 2
    with pytest.raises(UserError, match="Unknown status"):
        await engine.list(status="sleeping")

    with pytest.raises(ExecutionNotFoundError, match="temporal"):
        await engine.result(_id("unknown"))
    await engine.cancel(paused)


async def test_start_refuses_what_cannot_cross_to_the_worker(app: ModuleType, engine: TemporalEngine) -> None:
    with pytest.raises(UserError, match="deps"):
        await engine.start_agent(app.basic, "x", execution_id=_id("kw"), deps=object())
    plain = Agent(TestModel(), name="plain")
    with pytest.raises(UserError, match="not bound to the temporal engine"):
        await engine.start_agent(plain, "x", execution_id=_id("plain"))
    with pytest.raises(UserError, match="cannot be served on Temporal"):
        engine.worker(await engine.client(), [plain])
    existing = _id("taken")
    assert (await engine.run_agent(app.basic, "add", execution_id=existing)).completed
    with pytest.raises(ExecutionConflictError, match="not of agent 'approval'"):
        await engine.start_agent(app.approval, "pay", execution_id=existing)


async def test_unreachable_server_names_the_address() -> None:
    address = f"127.0.0.1:{free_port()}"
    engine = TemporalEngine(EngineOptions(temporal_address=address, temporal_connect_timeout=1.0))
    with pytest.raises(UserError, match=f"Cannot reach the Temporal server at {address}"):
        await engine.describe("anything")


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    forget_engines()
    monkeypatch.setitem(sys.modules, "temporalio", None)  # what an environment without the extra looks like
    with pytest.raises(UserError, match=r"perdure\[temporal\]"):
        get_engine("temporal")
    with pytest.raises(UserError, match=r"perdure\[temporal\]"):
        Agent(TestModel(), name="needs-extra", capabilities=[PerdureDurability(engine="temporal")])
    forget_engines()


def test_perdure_retry_policies_map_to_activity_retry_policies(temporal_env: str) -> None:
    from perdure.durable.retry import RetryPolicy
    from perdure.engines._temporal_map import activity_configs

    options = EngineOptions(temporal_activity_timeout=5, temporal_heartbeat_timeout=1)
    tool_policy = RetryPolicy(max_retries=4, retry_delay=0.5, max_delay=8, exponential_backoff=False)
    base, model = activity_configs(options, None, tool_policy)
    policy: Any = base["retry_policy"]
    assert policy.maximum_attempts == 5 and policy.backoff_coefficient == 1.0
    assert policy.initial_interval.total_seconds() == 0.5 and policy.maximum_interval.total_seconds() == 8
    assert base["start_to_close_timeout"].total_seconds() == 5
    assert base["heartbeat_timeout"].total_seconds() == 1 and model["heartbeat_timeout"].total_seconds() == 1
    assert model["retry_policy"].maximum_attempts == 0  # Temporal's default (unlimited), not the tools'


async def test_a_long_run_continues_as_new_and_runs_nothing_twice(
    app: ModuleType, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERDURE_TEMPORAL_MAX_HISTORY", "20")  # a handful of activities per run
    from perdure.settings import reset_settings

    reset_settings()
    forget_engines()
    engine = get_engine("temporal")
    assert isinstance(engine, TemporalEngine) and engine.options.temporal_max_history == 20
    serving = asyncio.ensure_future(engine.serve(app.AGENTS))
    try:
        execution = DurableExecution(engine="temporal", execution_id=_id("long"))
        run = await execution.run_agent_async(app.long, "take eight steps")
        assert run.status is ExecutionStatus.COMPLETED and run.output == "8 steps"
        assert lines(files["ledger"]) == [f"step {i}" for i in range(8)]  # each tool call once
        assert lines(files["requests"]) == [f"long request {i}" for i in range(9)]  # each request once
        client = await engine.client()
        runs = [
            w async for w in client.list_workflows(f"WorkflowId = '{execution.execution_id}'")
        ]  # one Temporal run per continuation, all closed
        assert len(runs) >= 3, [r.status for r in runs]  # 5 here: 9 requests, about 20 events each
        history = await client.get_workflow_handle(execution.execution_id).fetch_history()
        assert len(history.events) < 40  # the last run's history only: bounded, not 8 units' worth
        info = await engine.describe(execution.execution_id)
        assert info is not None and info["status"] == "completed"
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await engine.close()
