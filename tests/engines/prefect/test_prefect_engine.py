"""The Prefect engine's client and worker: start, join, observe, list, cancel, and what it refuses."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect_workers import start_worker, stop
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure.durable.capability import PerdureDurability
from perdure.durable.execution import DurableExecution
from perdure.engines import get_engine
from perdure.errors import ExecutionNotFoundError, UserError
from perdure.records import ExecutionStatus


@pytest.fixture(scope="module")
def worker(prefect_server: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One worker serving `prefect_app.agent` for this module; yields its ledger directory."""
    directory = tmp_path_factory.mktemp("prefect-worker")
    env = {
        **prefect_server,
        "LEDGER": str(directory / "ledger"),
        "REQUESTS": str(directory / "requests"),
        "CALLS": "2",
    }
    process: subprocess.Popen[bytes] = start_worker(env, directory / "worker.log")
    yield directory
    stop(process)


def _idle_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("idle")])


async def test_runs_on_a_worker_and_is_observable(prefect_settings: dict[str, str], worker: Path) -> None:
    import prefect_app

    engine = get_engine("prefect")
    execution_id = f"observe-{uuid.uuid4().hex[:8]}"
    first = await engine.start_agent(prefect_app.agent, "go", execution_id=execution_id)
    assert await engine.start_agent(prefect_app.agent, "go", execution_id=execution_id) == first

    run = await engine.result(execution_id, wait=True)
    assert run.status is ExecutionStatus.COMPLETED
    assert run.output == "finished 2 calls"
    assert run.info["flow_run_id"] == first

    info = await engine.describe(execution_id)
    assert info is not None
    assert info["status"] == "completed" and info["execution_id"] == execution_id
    assert info["metadata"]["agent"] == "prefect_crash"
    listed = [item["execution_id"] for item in await engine.list(status="completed")]
    assert execution_id in listed
    assert execution_id not in [item["execution_id"] for item in await engine.list(status="failed")]
    assert await engine.describe("no-such-execution") is None
    with pytest.raises(ExecutionNotFoundError):
        await engine.result("no-such-execution")


async def test_durable_execution_delegates(prefect_settings: dict[str, str], worker: Path) -> None:
    import prefect_app

    durable = DurableExecution(engine="prefect", execution_id=f"facade-{uuid.uuid4().hex[:8]}")
    run = await durable.run_agent_async(prefect_app.agent, "go")
    assert run.completed and run.output == "finished 2 calls"


async def test_cancel_a_run_no_worker_took(prefect_settings: dict[str, str]) -> None:
    idle = Agent(
        FunctionModel(_idle_model),
        name="prefect_unserved",
        capabilities=[PerdureDurability(engine="prefect")],
    )
    engine = get_engine("prefect")
    execution_id = f"cancel-{uuid.uuid4().hex[:8]}"
    await engine.start_agent(idle, "go", execution_id=execution_id)
    assert (await engine.result(execution_id, wait=False)).status is ExecutionStatus.SUCCESS
    await engine.cancel(execution_id, "not needed")
    assert (await engine.result(execution_id, wait=True)).status is ExecutionStatus.CANCELLED


async def test_refuses_approvals_and_non_json_arguments(prefect_settings: dict[str, str]) -> None:
    import prefect_app

    engine = get_engine("prefect")
    with pytest.raises(UserError, match="does not support tool approvals"):
        await engine.approve("x", "call-0")
    with pytest.raises(UserError, match="does not support tool approvals"):
        await engine.deny("x", "call-0", message="no")
    with pytest.raises(UserError, match="JSON-compatible"):
        await engine.start_agent(prefect_app.agent, "go", execution_id="x", deps=object())


def test_bind_carries_name_and_models(prefect_settings: dict[str, str]) -> None:
    from pydantic_ai.durable_exec.prefect import PrefectDurability

    other = FunctionModel(_idle_model)
    agent = Agent(FunctionModel(_idle_model), name="bound_agent")
    bound = get_engine("prefect").bind(PerdureDurability(name="units", models={"other": other}), agent)
    assert isinstance(bound, PrefectDurability)
    assert bound.name == "units"
    assert bound._extra_models == {"other": other}
