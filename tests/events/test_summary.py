"""`execution_summary`: progress, usage, savings over every resume, time spent."""

from __future__ import annotations

from pathlib import Path

import pytest

import perdure
from perdure import DurableExecution, Task, execution_summary, execution_summary_async
from perdure.errors import ExecutionNotFoundError, UserError
from perdure.storage import SQLiteDurableStorage
from support.stepper import BROKEN, RAN
from support.stepper import stepper as _agent


@pytest.fixture(autouse=True)
def _reset() -> None:
    BROKEN.clear()
    RAN.clear()


async def test_progress_usage_and_savings_across_a_resume(tmp_path: Path) -> None:
    storage = SQLiteDurableStorage(tmp_path / "r.db")
    BROKEN.add("step2")
    first = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(RuntimeError):
        await first.run_agent_async(_agent(), "go", expected_steps=5)
    failed = await execution_summary_async(first.execution_id, storage)
    assert failed.status == "failed" and failed.running is False and failed.attempts == 1
    assert failed.completed_units == 3 and failed.total_units == 5 and failed.progress == pytest.approx(60.0)
    assert failed.model_requests == 2 and failed.tool_calls == 1
    assert failed.requests_saved == 0 and failed.tokens_saved == 0
    assert failed.error is not None and "step 2 is down" in failed.error
    assert failed.name == "stepper"

    BROKEN.clear()
    second = DurableExecution(storage, execution_id=first.execution_id, auto_cleanup=False)
    await second.resume_agent_async(_agent())
    done = await execution_summary_async(first.execution_id, storage)
    assert done.status == "completed" and done.progress == 100.0 and done.completed_units == 5
    assert done.attempts == 2
    assert done.requests_saved == 2 and done.tool_calls_saved == 1
    assert done.tokens_saved == failed.total_tokens > 0  # the two journaled requests were not paid again
    assert done.model_requests == 3 and done.tool_calls == 2
    assert done.time_spent > 0 and done.elapsed >= done.time_spent * 0  # both measured
    assert done.last_update >= failed.last_update


async def test_unknown_total_and_unknown_execution(tmp_path: Path) -> None:
    storage = SQLiteDurableStorage(tmp_path / "r.db")
    durable = DurableExecution(storage, auto_cleanup=False)
    await durable.run_agent_async(_agent(1), "go")
    summary = execution_summary(durable.execution_id, f"sqlite:///{tmp_path / 'r.db'}")
    assert summary.total_units is None and summary.progress is None and summary.completed_units == 3
    with pytest.raises(ExecutionNotFoundError) as raised:
        await execution_summary_async("nope", storage)
    assert "nope" in str(raised.value)


async def test_workflow_declared_steps_give_progress(tmp_path: Path) -> None:
    @perdure.step
    async def add(a: int) -> int:
        if a == 2 and "add2" in BROKEN:
            raise RuntimeError("add 2 broke")
        return a + 1

    @perdure.workflow(name="summary-three", steps=3)
    async def three() -> int:
        return await add(1) + await add(2) + await add(3)

    storage = SQLiteDurableStorage(tmp_path / "r.db")
    BROKEN.add("add2")
    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(RuntimeError):
        await durable.run_workflow_async(three)
    summary = await execution_summary_async(durable.execution_id, storage)
    assert summary.completed_units == 1 and summary.total_units == 3
    assert summary.progress == pytest.approx(100 / 3)
    assert summary.name == "summary-three"


def test_task_expected_steps_is_validated_and_stored(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="expected_steps"):
        Task("x", expected_steps=0)
    with pytest.raises(UserError, match="steps"):
        perdure.workflow(name="bad-steps", steps=-1)(_noop)
    storage = SQLiteDurableStorage(tmp_path / "f.db")
    agent = perdure.Agent("test", name="summary-facade")
    task = Task("say hi", expected_steps=4, durable_execution=DurableExecution(storage, auto_cleanup=False))
    agent.do(task)
    summary = execution_summary(task.durable_execution_id or "", storage)
    assert summary.total_units == 4 and summary.progress == 100.0


async def _noop() -> None:
    return None
