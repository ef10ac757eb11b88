"""The DBOS engine in one process: runs, approvals, cancel, visibility, errors (real DBOS on SQLite)."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import pytest
from pydantic_ai import Agent, Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure.durable.capability import PerdureDurability
from perdure.durable.execution import DurableExecution
from perdure.durable.step_context import current_step
from perdure.engines import forget_engines, get_engine
from perdure.engines.dbos import DBOSEngine
from perdure.errors import ExecutionConflictError, ExecutionNotFoundError, UserError
from perdure.records import ExecutionStatus


def _returns(messages: list[ModelMessage]) -> list[Any]:
    return [part for message in messages for part in message.parts if part.part_kind == "tool-return"]


def counting_agent(name: str, calls: int, ledger: list[str], requests: list[int]) -> Agent[None, str]:
    """A deterministic agent making `calls` sequential tool calls; the lists count executions."""

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = len(_returns(messages))
        requests.append(done)
        if done < calls:
            return ModelResponse(parts=[ToolCallPart("add", {"x": done}, tool_call_id=f"c{done}")])
        return ModelResponse(parts=[TextPart(f"sum {sum(int(r.content) for r in _returns(messages))}")])

    async def add(x: int) -> int:
        ledger.append(current_step().idempotency_key)
        return x + 1

    return Agent(FunctionModel(model), name=name, tools=[Tool(add)], capabilities=[PerdureDurability()])


async def test_agent_with_only_perdure_durability_runs_on_dbos(engine: DBOSEngine) -> None:
    ledger: list[str] = []
    requests: list[int] = []
    agent = counting_agent("adder", 4, ledger, requests)  # PERDURE_ENGINE=dbos is set by the fixture
    durable = DurableExecution(engine="dbos", execution_id="run-a")
    assert durable.engine is engine

    run = await durable.run_agent_async(agent, "add things")

    assert run.status is ExecutionStatus.COMPLETED and run.completed
    assert run.output == "sum 10"
    assert requests == [0, 1, 2, 3, 4]
    # one step per tool call; keys are <workflow id>:tool:<step position>/<tool_call_id>
    assert ledger == [f"run-a:tool:{2 * i + 2}/c{i}" for i in range(4)]
    steps = [item["function_name"] for item in await recorded_steps("run-a")]
    assert steps.count("adder.tool:add") == 4
    assert steps.count("adder__model.request") == 5

    # joining the same execution again does not run anything again
    again = await durable.run_agent_async(agent, "add things")
    assert again.output == "sum 10" and len(ledger) == 4 and len(requests) == 5


async def recorded_steps(execution_id: str) -> list[dict[str, Any]]:
    from dbos import DBOS

    return list(await DBOS.list_workflow_steps_async(execution_id))


def approval_agent(ledger: list[dict[str, Any]]) -> Agent[None, str]:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        results = _returns(messages)
        if not results:
            return ModelResponse(parts=[ToolCallPart("delete", {"path": "/tmp/x"}, tool_call_id="del-1")])
        return ModelResponse(parts=[TextPart(f"tool said: {results[0].content}")])

    def delete(path: str) -> str:
        ledger.append({"path": path})
        return f"deleted {path}"

    return Agent(
        FunctionModel(model),
        name="approver",
        tools=[Tool(delete, requires_approval=True)],
        capabilities=[PerdureDurability()],
    )


async def test_approve_continues_the_run_and_runs_the_tool_once(engine: DBOSEngine) -> None:
    ledger: list[dict[str, Any]] = []
    agent = approval_agent(ledger)
    durable = DurableExecution(engine="dbos", execution_id="appr-1")

    run = await durable.run_agent_async(agent, "clean up")
    assert run.paused and ledger == []
    assert [(c.tool_call_id, c.tool_name, c.args) for c in run.pending] == [
        ("del-1", "delete", {"path": "/tmp/x"})
    ]
    info = await engine.describe("appr-1")
    assert info is not None and info["status"] == "paused"
    assert info["pending"]["calls"][0]["tool_call_id"] == "del-1"
    assert [i["execution_id"] for i in await engine.list(status="paused")] == ["appr-1"]

    with pytest.raises(ExecutionConflictError, match="not waiting for a decision on call 'nope'"):
        await engine.approve("appr-1", "nope")

    done = await durable.resume_agent_async(agent, approvals={"del-1": {"path": "/tmp/y"}})
    assert done.status is ExecutionStatus.COMPLETED
    assert done.output == "tool said: deleted /tmp/y"
    assert ledger == [{"path": "/tmp/y"}]
    assert await engine.list(status="paused") == []


async def test_deny_tells_the_model_and_never_runs_the_tool(engine: DBOSEngine) -> None:
    ledger: list[dict[str, Any]] = []
    agent = approval_agent(ledger)
    durable = DurableExecution(engine="dbos", execution_id="deny-1")
    assert (await durable.run_agent_async(agent, "clean up")).paused

    done = await durable.resume_agent_async(agent, approvals={"del-1": "not on a Friday"})

    assert done.completed and done.output == "tool said: not on a Friday"
    assert ledger == []


async def test_cancel_stops_the_run_before_its_next_step(engine: DBOSEngine) -> None:
    ledger: list[str] = []
    requests: list[int] = []
    started = asyncio.Event()

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = len(_returns(messages))
        requests.append(done)
        return ModelResponse(parts=[ToolCallPart("slow", {"x": done}, tool_call_id=f"s{done}")])

    async def slow(x: int) -> int:
        ledger.append(str(x))
        started.set()
        await asyncio.sleep(0.05)
        return x

    agent = Agent(
        FunctionModel(model), name="endless", tools=[Tool(slow)], capabilities=[PerdureDurability()]
    )
    await engine.start_agent(agent, "loop", execution_id="cancel-1")
    await asyncio.wait_for(started.wait(), 10)

    await engine.cancel("cancel-1", reason="test")
    run = await engine.result("cancel-1", wait=True)

    assert run.status is ExecutionStatus.CANCELLED
    assert "cancel-1" in (run.error or "") and "cancelled" in (run.error or "")
    count = len(ledger)
    await asyncio.sleep(0.3)
    assert len(ledger) == count < 40  # nothing ran after the cancel took effect
    info = await engine.describe("cancel-1")
    assert info is not None and info["status"] == "cancelled"


async def test_describe_and_list_map_dbos_workflow_status(engine: DBOSEngine) -> None:
    ledger: list[str] = []
    agent = counting_agent("lister", 1, ledger, [])
    for execution_id in ("l-1", "l-2"):
        await engine.run_agent(agent, "go", execution_id=execution_id)

    info = await engine.describe("l-2")
    assert info is not None
    assert info["execution_id"] == "l-2" and info["status"] == "completed" and info["output"] == "sum 1"
    assert info["metadata"]["agent"] == "lister" and info["metadata"]["workflow_name"] == "perdure.agent"
    assert info["step_name"] == "lister__model.request" and info["step_index"] == 2
    assert info["created_at"] and info["timestamp"] == info["updated_at"]
    assert info["usage"]["requests"] == 2 and info["usage"]["tool_calls"] == 1
    assert await engine.describe("missing") is None

    listed = await engine.list()
    assert {i["execution_id"] for i in listed} == {"l-1", "l-2"}
    assert len(await engine.list(limit=1)) == 1
    assert await engine.list(status="failed") == []
    assert len(await engine.list(status="completed")) == 2

    with pytest.raises(ExecutionNotFoundError, match="'missing'"):
        await engine.result("missing")

    # the seed API maps onto the same visibility (engine from the setting, no storage)
    seed_info = await DurableExecution(execution_id="l-1").get_execution_info_async()
    assert seed_info == await engine.describe("l-1")
    seed_list = await DurableExecution.list_all_executions_async(status="completed")
    assert {i["execution_id"] for i in seed_list} == {"l-1", "l-2"}

    # what run_agent_async returns on an engine reads like the embedded engine's AttemptResult
    from perdure.durable import AttemptResult

    run = await DurableExecution(execution_id="l-2").run_agent_async(agent, "go")  # joins: runs nothing
    assert isinstance(run, AttemptResult) and not run.paused
    assert len(ledger) == 2  # one tool call per run, none for the join
    assert run.head.status is ExecutionStatus.COMPLETED and run.head.output == run.output == "sum 1"
    assert run.replay.replayed_tool_calls == 0
    with pytest.raises(UserError, match="ran on the dbos engine"):
        _ = run.result


async def test_failed_run_reports_the_error(engine: DBOSEngine) -> None:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[ToolCallPart("boom", {}, tool_call_id="b1")])

    def boom() -> str:
        raise ValueError("disk on fire")

    agent = Agent(
        FunctionModel(model), name="failing", tools=[Tool(boom)], capabilities=[PerdureDurability()]
    )
    run = await engine.run_agent(agent, "go", execution_id="fail-1")

    assert run.status is ExecutionStatus.FAILED and run.error == "disk on fire"
    info = await engine.describe("fail-1")
    assert info is not None and info["error_details"]["type"] == "ValueError"
    assert [i["execution_id"] for i in await engine.list(status="failed")] == ["fail-1"]


async def test_run_options_must_cross_the_workflow_boundary_as_json(engine: DBOSEngine) -> None:
    agent = counting_agent("opts", 1, [], [])
    with pytest.raises(UserError, match="deps"):
        await engine.start_agent(agent, "go", execution_id="o-1", deps=object())
    plain: Agent[None, str] = Agent(
        FunctionModel(lambda m, i: ModelResponse(parts=[TextPart("x")])), name="plain"
    )
    with pytest.raises(UserError, match="does not run on the DBOS engine"):
        await engine.start_agent(plain, "go", execution_id="o-2")


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without_dbos(name: str, *args: Any) -> Any:
        return None if name == "dbos" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_dbos)
    forget_engines()
    with pytest.raises(UserError, match=r"pip install 'perdure\[dbos\]'"):
        get_engine("dbos")


async def test_postgres_system_database(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    from perdure.engines import EngineOptions

    url = postgres_dsn.rsplit("/", 1)[0] + f"/perdure_dbos_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PERDURE_ENGINE", "dbos")
    forget_engines()
    adapter = get_engine("dbos", EngineOptions(dbos_database_url=url))
    ledger: list[str] = []
    try:
        agent = counting_agent("pg_adder", 3, ledger, [])
        run = await adapter.run_agent(agent, "go", execution_id="pg-1")
        assert run.completed and run.output == "sum 6" and len(ledger) == 3
        info = await adapter.describe("pg-1")
        assert info is not None and info["status"] == "completed"
    finally:
        await adapter.close()
        forget_engines()


async def test_cli_list_and_show_read_dbos_workflows(engine: DBOSEngine, dbos_url: str) -> None:
    import json
    from concurrent.futures import ThreadPoolExecutor

    from typer.testing import CliRunner

    from perdure.cli import app

    agent = counting_agent("cli_agent", 1, [], [])
    await engine.run_agent(agent, "go", execution_id="cli-1")
    await engine.close()  # the CLI opens its own client on the same system database
    forget_engines()
    runner = CliRunner()

    def invoke(*args: str) -> Any:  # in a thread of its own: the CLI runs its own event loop
        command = [*args, "--engine", "dbos", "--dbos-url", dbos_url]
        with ThreadPoolExecutor(1) as pool:  # DBOS.destroy shut this loop's default executor down
            return pool.submit(runner.invoke, app, command, env={"COLUMNS": "80"}).result()

    listed = invoke("list")
    assert listed.exit_code == 0, listed.output
    assert "cli-1" in listed.output and "completed" in listed.output and "cli_agent" in listed.output
    assert "1 execution on the dbos engine" in listed.output
    assert all(len(line) <= 80 for line in listed.output.splitlines())
    shown = invoke("show", "cli-1", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["head"]["status"] == "completed"
    missing = invoke("show", "nope")
    assert missing.exit_code == 3
    assert "no execution 'nope' on the dbos engine" in missing.output


async def test_cli_approve_deny_cancel_reach_the_waiting_dbos_run(engine: DBOSEngine, dbos_url: str) -> None:
    import os
    import subprocess
    import sys

    from support.paths import ROOT

    def cli(*args: str) -> subprocess.CompletedProcess[str]:  # another process, as an operator's shell
        env = {**os.environ, "PERDURE_ENGINE": "dbos", "PERDURE_DBOS_DATABASE_URL": dbos_url}
        env["PYTHONPATH"] = str(ROOT / "src")
        command = [sys.executable, "-m", "perdure.cli", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    ledger: list[dict[str, Any]] = []
    agent = approval_agent(ledger)
    for execution_id in ("op-1", "op-2", "op-3"):
        run = await DurableExecution(engine="dbos", execution_id=execution_id).run_agent_async(
            agent, "clean up"
        )
        assert run.paused

    approved = await asyncio.to_thread(cli, "approve", "op-1", "del-1", "--args", '{"path": "/tmp/z"}')
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "op-1: del-1 approved through the dbos engine" in approved.stdout
    assert (await engine.result("op-1")).output == "tool said: deleted /tmp/z"
    assert ledger == [{"path": "/tmp/z"}]

    denied = await asyncio.to_thread(cli, "deny", "op-2", "del-1", "--message", "not today")
    assert denied.returncode == 0, denied.stdout + denied.stderr
    assert (await engine.result("op-2")).status is ExecutionStatus.COMPLETED
    assert ledger == [{"path": "/tmp/z"}]  # the denied call never ran

    cancelled = await asyncio.to_thread(cli, "cancel", "op-3")
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert (await engine.result("op-3")).status is ExecutionStatus.CANCELLED

    again = await asyncio.to_thread(cli, "approve", "op-1", "del-1")
    assert again.returncode == 4, again.stdout + again.stderr  # not waiting for a decision: a conflict
    unknown = await asyncio.to_thread(cli, "cancel", "nope")
    assert unknown.returncode == 3, unknown.stdout + unknown.stderr
