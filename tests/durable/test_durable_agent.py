"""The seed's `DurableAgent` and `StatefulWorkflow` facades over executions and checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure.durable import Checkpoint, DurableAgent, StatefulWorkflow
from perdure.errors import UserError
from perdure.records import ExecutionStatus
from perdure.storage import InMemoryDurableStorage, SQLiteDurableStorage
from support.paths import SRC, TESTS

RAN: Counter[str] = Counter()
FAIL: set[str] = set()


def scripted(label: str, calls: int = 2) -> FunctionModel:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        RAN[f"model {label}"] += 1
        done = sum(1 for m in messages if isinstance(m, ModelResponse))
        if done < calls:
            return ModelResponse(parts=[ToolCallPart("lookup", {"n": done}, tool_call_id=f"c{done}")])
        return ModelResponse(parts=[TextPart(f"{label} answered")])

    return FunctionModel(respond)


def lookup(n: int) -> int:
    """Look up n (counted; fails once while 'lookup' is in FAIL and n == 1)."""
    RAN[f"lookup {n}"] += 1
    if n == 1 and "lookup" in FAIL:
        FAIL.discard("lookup")
        raise ConnectionError("upstream reset")
    return n


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()
    FAIL.clear()


async def test_runs_are_executions_and_every_unit_is_a_checkpoint(tmp_path: Path) -> None:
    seen: list[Checkpoint] = []
    resumed: list[Checkpoint] = []
    agent = DurableAgent(
        scripted("a"),
        backend=f"sqlite:///{tmp_path / 'agents.db'}",
        name="seed-agent",
        tools=[lookup],
        on_checkpoint=seen.append,
        on_resume=resumed.append,
    )
    FAIL.add("lookup")
    with pytest.raises(ConnectionError):
        await agent.run("go")
    points = await agent.list_checkpoints()
    assert points[-1].kind == "manual" and points[-1].description == "run failed"  # checkpoint_on_error
    assert points[-1].state == {"error_type": "ConnectionError", "error": "upstream reset"}
    first_count = agent.checkpoint_count
    assert first_count == len(seen) == 4  # model, lookup 0, model, error checkpoint
    result = await agent.run("go")
    assert result.output == "a answered"
    assert resumed and resumed[0].id == points[-1].id  # on_resume got the latest checkpoint
    assert Counter({"model a": 3, "lookup 0": 1, "lookup 1": 2}) == RAN  # lookup 0 did not run again
    assert agent.checkpoint_count == first_count + 2  # lookup 1 and the last model request
    head = agent.backend.load_state(agent.workflow_id)
    assert head is not None and head.status is ExecutionStatus.COMPLETED
    again = await agent.run("another")  # a completed execution: the next run is a new one
    assert again.output == "a answered" and agent.workflow_id != head.execution_id


async def test_manual_checkpoints_and_checkpoint_every_n_steps_zero() -> None:
    agent = DurableAgent(
        scripted("m", calls=1), name="manual-only", tools=[lookup], checkpoint_every_n_steps=0
    )
    first = await agent.create_checkpoint({"step": 1, "data": "initial"})
    result = await agent.run("go")  # not journaled
    assert result.output == "m answered"
    second = await agent.create_checkpoint({"step": 2, "result": result.output})
    points = await agent.list_checkpoints()
    assert [p.id for p in points] == [first, second] and all(p.kind == "manual" for p in points)
    assert (await agent.get_checkpoint(first)).state == {"step": 1, "data": "initial"}
    assert agent.backend.load_steps(agent.workflow_id)[0].key == "manual#1"
    durable = DurableAgent(scripted("d"), name="durable-first", tools=[lookup])
    with pytest.raises(UserError, match="run it first"):
        await durable.create_checkpoint({"x": 1})


async def test_from_checkpoint_forks_and_run_from_checkpoint_rewinds() -> None:
    storage = InMemoryDurableStorage()
    agent = DurableAgent(scripted("f"), backend=storage, name="forkable", tools=[lookup])
    await agent.run("go")
    points = await agent.list_checkpoints()
    after_first_tool = next(p for p in points if p.step_name == "tool:lookup")
    RAN.clear()
    forked = DurableAgent.from_checkpoint(after_first_tool, backend=storage)
    assert forked.workflow_id != agent.workflow_id
    assert (await forked.run("continue")).output == "f answered"
    assert Counter({"model f": 2, "lookup 1": 1}) == RAN  # only after the checkpoint
    fork_head = storage.load_state(forked.workflow_id)
    assert fork_head is not None and fork_head.parent_id == agent.workflow_id
    RAN.clear()
    rerun = await agent.run_from_checkpoint(after_first_tool.id)
    assert rerun.output == "f answered" and Counter({"model f": 2, "lookup 1": 1}) == RAN


class Phase(BaseModel):
    phase: str = "planning"
    plan: str | None = None
    results: list[str] = []


class Pipeline(StatefulWorkflow):
    """The seed's stateful multi-agent workflow, in small."""

    def __init__(self, backend: Any) -> None:
        super().__init__(backend)
        self.context = Phase()

    async def run(self, task: str) -> dict[str, Any]:
        planner = DurableAgent(
            scripted("planner", calls=1), backend=self.backend, name="sw-planner", tools=[lookup]
        )
        executor = DurableAgent(
            scripted("executor", calls=1), backend=self.backend, name="sw-exec", tools=[lookup]
        )
        self.context.plan = (await planner.run(f"plan {task}")).output
        self.context.phase = "execution"
        await self.save_state()
        if "executor" in FAIL:
            raise RuntimeError("executor machine lost")
        self.context.results.append((await executor.run(self.context.plan)).output)
        self.context.phase = "done"
        await self.save_state()
        return {"plan": self.context.plan, "results": self.context.results}


async def test_stateful_workflow_is_one_execution_that_resumes(tmp_path: Path) -> None:
    storage = SQLiteDurableStorage(tmp_path / "stateful.db")
    flow = Pipeline(storage)
    FAIL.add("executor")
    with pytest.raises(RuntimeError, match="machine lost"):
        await flow.start("solar")
    saved = await Pipeline.resume_from_checkpoint(flow.workflow_id, storage)
    assert saved.context == Phase(phase="execution", plan="planner answered")
    FAIL.clear()
    RAN.clear()
    output = await saved.resume()
    assert output == {"plan": "planner answered", "results": ["executor answered"]}
    assert RAN["model planner"] == 0 and RAN["model executor"] == 2  # the planner was not paid again
    final = await Pipeline.resume_from_checkpoint(flow.workflow_id, storage)
    assert final.context.phase == "done"


def test_batched_journal_runs_at_most_n_minus_1_units_again_after_a_kill(tmp_path: Path) -> None:
    """checkpoint_every_n_steps=5: a SIGKILL loses the units waiting in the batch, never more."""
    ledger = tmp_path / "ledger"
    url = f"sqlite:///{tmp_path / 'batch.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC)]), "LEDGER": str(ledger)}
    code = "import sys; from support import batch_app; sys.exit(batch_app.main(sys.argv[1:]))"

    def run(phase: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, phase, url],
            env={**env, "PHASE": phase, **extra},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    # Killed as the 7th tool call starts: 13 units finished, 10 journaled (two batches), 3 waiting.
    killed = run("start", PERDURE_FAULT="before_tool_call@work:7")
    assert killed.returncode == -9, killed.stderr
    done = run("resume")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "batched: 12 items"
    lines = ledger.read_text().split()
    tools = Counter(line for line in lines if line.startswith("tool"))
    assert all(count in (1, 2) for count in tools.values()) and len(tools) == 12
    again = sum(1 for count in tools.values() if count == 2)
    assert again == 1 and tools["tool5"] == 2, tools  # only the batch in flight (tool 5) ran again
