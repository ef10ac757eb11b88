"""The seed's `continue_run_async` API (upsonic-continue-run.md) on perdure's journal.

`SqliteDatabase` + `Agent(db=..., retry=N)` + `do_async(task, return_output=True)` +
`continue_run_async(run_id=... | task=...)`: the four recovery flows of the seed document, the
output object, `agent._agent_run_output` after an error, and what `retry` means (total attempts,
each further one resuming from the journal). Counts come from a ledger file (see facade_app.py):
a resumed run must never pay again for a model request or repeat a tool that was journaled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import perdure
from perdure import Agent, DurableExecution, Task
from perdure.agent import AgentRunOutput
from perdure.db import SqliteDatabase
from perdure.durable import InMemoryDurableStorage
from perdure.errors import UserError
from perdure.records import ExecutionStatus
from support import facade_app as app
from support.paths import SRC, TESTS

APP = TESTS / "support" / "facade_app.py"
EXPECTED = "fetch={'source': 'db.csv', 'rows': [1, 2, 3]}[success]; store=stored-3[success]"


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ledger.txt"
    monkeypatch.setenv("LEDGER", str(path))
    monkeypatch.setenv("PHASE", "parent")
    monkeypatch.delenv("PERDURE_FAULT", raising=False)
    return path


@pytest.fixture
def outage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """While this file exists, the `fetch` tool fails with ConnectionError (a network outage)."""
    flag = tmp_path / "outage"
    flag.touch()
    monkeypatch.setenv("FAIL_FETCH_FILE", str(flag))
    yield flag
    flag.unlink(missing_ok=True)


def _db(tmp_path: Path) -> SqliteDatabase:
    return SqliteDatabase(db_file=str(tmp_path / "durable.db"), session_id="session_1", user_id="user_1")


def _agent(db: SqliteDatabase, **kwargs: object) -> Agent:
    return Agent(app.plan_model(app.PIPELINE_STEPS), db=db, **kwargs)  # type: ignore[arg-type]


def _counts(path: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for event in app.read_ledger(path):
        words = event.split()
        counts[" ".join(words[:2]) if words[0] in ("tool", "fail") else words[0]] += 1
    return counts


async def _fail_once(agent: Agent, task: Task, outage: Path) -> str:
    """The seed's first half: `do_async` raises, the run id is read from `agent._agent_run_output`."""
    with pytest.raises(ConnectionError, match="connection reset"):
        await agent.do_async(task, return_output=True)
    agent_output = agent._agent_run_output
    assert agent_output is not None and agent_output.run_id is not None
    outage.unlink()  # the network is back
    return agent_output.run_id


# ---- the four recovery flows of the seed document ------------------------------------------------


async def test_recovery_with_run_id_same_agent(tmp_path: Path, ledger: Path, outage: Path) -> None:
    db = _db(tmp_path)
    agent = _agent(db, retry=1)
    task = app.new_task("pipeline")
    run_id = await _fail_once(agent, task, outage)
    assert run_id == task.durable_execution_id

    result = await agent.continue_run_async(run_id=run_id, return_output=True)
    assert isinstance(result, AgentRunOutput)
    assert result.run_id == run_id and result.completed and result.output == EXPECTED
    # model request 1 was journaled before the failure and replayed, never paid for twice.
    assert _counts(ledger) == Counter({"model": 3, "fail fetch": 1, "tool fetch": 1, "tool store": 1})
    assert result.replay.replayed_model_requests == 1 and result.replay.executed_model_requests == 2
    assert result.replay.resumes == 1 and result.usage.requests == 3


async def test_recovery_with_task_same_agent(tmp_path: Path, ledger: Path, outage: Path) -> None:
    db = _db(tmp_path)
    agent = _agent(db, retry=1)
    task = app.new_task("pipeline")
    await _fail_once(agent, task, outage)
    assert task.status is ExecutionStatus.FAILED

    result = await agent.continue_run_async(task=task, return_output=True)
    assert result.completed and result.output == EXPECTED
    assert task.response == EXPECTED and task.status is ExecutionStatus.COMPLETED
    assert _counts(ledger)["model"] == 3 and _counts(ledger)["tool fetch"] == 1


async def test_recovery_with_run_id_new_agent_in_a_new_process(
    tmp_path: Path, ledger: Path, outage: Path
) -> None:
    db = _db(tmp_path)
    agent = _agent(db, retry=1)
    run_id = await _fail_once(agent, app.new_task("pipeline"), outage)
    db.close()

    env = {
        **os.environ,
        "PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}",
        "PHASE": "child",
        "FAIL_FETCH_FILE": str(outage),
    }
    proc = subprocess.run(
        [sys.executable, str(APP), "continue-run", str(tmp_path / "durable.db"), run_id, "pipeline"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child["run_id"] == run_id and child["status"] == "completed" and child["output"] == EXPECTED
    assert child["session_id"] == "session_1"
    assert child["replay"]["replayed_model_requests"] == 1
    # The new process paid only for the two requests that were never answered.
    assert ledger.read_text().splitlines() == [
        "parent model 1",
        "parent fail fetch",
        "child tool fetch db.csv",
        "child model 1",
        "child tool store 3",
        "child model 2",
    ]
    assert _counts(ledger) == Counter({"model": 3, "fail fetch": 1, "tool fetch": 1, "tool store": 1})
    info = DurableExecution.get_execution_info(run_id, _db(tmp_path).storage)
    assert info is not None and info["status"] == "completed"


async def test_recovery_with_task_new_agent(tmp_path: Path, ledger: Path, outage: Path) -> None:
    agent = _agent(_db(tmp_path), retry=1)
    task = app.new_task("pipeline")
    await _fail_once(agent, task, outage)

    new_agent = _agent(_db(tmp_path), retry=1)
    result = await new_agent.continue_run_async(task=task, return_output=True)
    assert result.completed and result.output == EXPECTED
    assert _counts(ledger)["model"] == 3

    # In a process where the task object is gone, a Task naming the run id does the same.
    fresh = Task(app.PROMPTS["pipeline"], tools=app.TOOLS["pipeline"], durable_execution_id=result.run_id)
    again = await _agent(_db(tmp_path)).continue_run_async(task=fresh, return_output=True)
    assert again.output == EXPECTED and again.attempts == 0 and fresh.response == EXPECTED


# ---- the output object -----------------------------------------------------------------------------


async def test_agent_run_output_after_error(tmp_path: Path, ledger: Path, outage: Path) -> None:
    agent = _agent(_db(tmp_path), retry=1)
    task = app.new_task("pipeline")
    with pytest.raises(ConnectionError):
        await agent.do_async(task, return_output=True)
    out = agent._agent_run_output
    assert out is not None and out is agent.last_run_output
    assert out.run_id == task.durable_execution_id and out.execution_id == out.run_id
    assert out.status is ExecutionStatus.FAILED and out.failed and out.output is None
    assert out.error is not None and out.error.type == "ConnectionError" and "db.csv" in out.error.message
    assert out.attempts == 1 and out.session_id == "session_1" and out.user_id == "user_1"
    assert out.usage.requests == 1 and out.pending is None


async def test_return_output_fields_and_session_listing(tmp_path: Path, ledger: Path) -> None:
    db = _db(tmp_path)
    agent = _agent(db)
    task = app.new_task("pipeline")
    out = await agent.do_async(task, return_output=True)
    assert out.run_id == task.durable_execution_id and out.completed and not out.paused
    assert out.output == EXPECTED == task.response
    assert out.status is ExecutionStatus.COMPLETED and out.error is None and out.pending is None
    assert out.usage.requests == 3 and out.usage.tool_calls == 2 and out.usage.total_tokens > 0
    assert out.replay.executed_model_requests == 3 and out.replay.replayed_model_requests == 0
    assert out.attempts == 1 and out.metadata == {"session_id": "session_1", "user_id": "user_1"}
    assert out.deferred is None and "completed" in repr(out)
    # Without return_output the bare output comes back, as before.
    assert await _agent(db).do_async(app.new_task("pipeline")) == EXPECTED

    other = SqliteDatabase(db_file=str(tmp_path / "durable.db"), session_id="session_2")
    await _agent(other).do_async(app.new_task("pipeline"))
    assert len(db.list_runs()) == 2 and len(other.list_runs()) == 1
    assert {r["metadata"]["session_id"] for r in db.list_runs(all_sessions=True)} == {
        "session_1",
        "session_2",
    }
    assert db.list_runs(status="failed") == [] and len(db.list_runs(limit=1)) == 1
    assert await db.list_runs_async(status="completed", limit=5) == db.list_runs(status="completed")
    # The runs are ordinary executions: the rest of perdure sees them.
    assert len(DurableExecution.list_all_executions(db.storage)) == 3


async def test_non_durable_task_output_has_no_run_id(ledger: Path) -> None:
    agent = Agent(app.plan_model(app.PIPELINE_STEPS))
    out = await agent.do_async(app.new_task("pipeline"), return_output=True)
    assert out.run_id is None and out.completed and out.output == EXPECTED and out.usage.requests == 3


# ---- retry = total attempts, each further attempt resumes -----------------------------------------


async def test_retry_1_makes_no_internal_retry(tmp_path: Path, ledger: Path) -> None:
    db = _db(tmp_path)
    agent = Agent(app.plan_model(app.PIPELINE_STEPS, fail_requests=(2,)), db=db, retry=1)
    with pytest.raises(ConnectionError, match="provider unreachable"):
        await agent.do_async(app.new_task("pipeline"))
    assert app.read_ledger(ledger) == ["model 1", "tool fetch db.csv", "model-fail 2"]
    out = agent._agent_run_output
    assert out is not None and out.attempts == 1 and out.failed


async def test_retry_3_resumes_from_the_journal_never_from_scratch(tmp_path: Path, ledger: Path) -> None:
    db = _db(tmp_path)
    agent = Agent(app.plan_model(app.PIPELINE_STEPS, fail_requests=(2, 3)), db=db, retry=3)
    out = await agent.do_async(app.new_task("pipeline"), return_output=True)
    assert out.completed and out.output == EXPECTED and out.attempts == 3
    # Attempt 1 paid for request 1 and ran fetch; attempts 2 and 3 replayed both from the journal.
    assert app.read_ledger(ledger) == [
        "model 1",
        "tool fetch db.csv",
        "model-fail 2",
        "model-fail 3",
        "model 4",
        "tool store 3",
        "model 5",
    ]
    assert out.usage.requests == 3  # journaled requests: each paid-for answer counted once
    assert out.replay.replayed_model_requests == 1 and out.replay.resumes == 2


async def test_retry_does_not_resume_what_a_resume_cannot_fix(tmp_path: Path, ledger: Path) -> None:
    agent = Agent(app.plan_model(app.APPROVAL_STEPS), db=_db(tmp_path), retry=3)
    task = app.new_task("approval")
    await agent.do_async(task)
    with pytest.raises(UserError, match="missing decisions"):
        await agent.continue_run_async(task=task, approvals={})
    assert agent._agent_run_output is not None and agent._agent_run_output.attempts == 1


def test_retry_validation_and_backward_compatible_zero() -> None:
    assert Agent("perdure:scripted").retry == 1
    assert Agent("perdure:scripted", retry=0).retry == 1  # old meaning "no extra resumes"
    assert Agent("perdure:scripted", retry=4).retry == 4
    for bad in (-1, True, 1.5):
        with pytest.raises(UserError, match="attempts"):
            Agent("perdure:scripted", retry=bad)  # type: ignore[arg-type]


# ---- sync twin, completed runs, misuse --------------------------------------------------------------


def test_sync_continue_run(tmp_path: Path, ledger: Path, outage: Path) -> None:
    db = _db(tmp_path)
    agent = _agent(db)
    task = app.new_task("pipeline")
    with pytest.raises(ConnectionError):
        agent.do(task)
    outage.unlink()
    assert agent.continue_run(task=task) == EXPECTED
    assert _counts(ledger)["model"] == 3
    # A completed run is not run again: its stored output comes back, with no model request.
    out = _agent(db).continue_run(run_id=task.durable_execution_id, return_output=True)
    assert out.output == EXPECTED and out.attempts == 0 and _counts(ledger)["model"] == 3


def test_continue_run_misuse(tmp_path: Path) -> None:
    agent = _agent(_db(tmp_path))
    with pytest.raises(UserError, match="run_id"):
        agent.continue_run()
    with pytest.raises(UserError, match="never ran durably"):
        agent.continue_run(task=app.new_task("pipeline"))
    with pytest.raises(UserError, match="has none"):
        Agent("perdure:scripted").continue_run(run_id="20260101000000-00000000")
    with pytest.raises(UserError, match="no db"):
        Agent("perdure:scripted").do(Task("x", durable_execution_id="20260101000000-00000000"))
    with pytest.raises(perdure.errors.StorageNotFoundError):  # nothing ran there yet: no database file
        agent.continue_run(run_id="20260101000000-00000000")
    assert not (tmp_path / "durable.db").exists()
    assert agent._agent_run_output is not None
    assert agent._agent_run_output.run_id == "20260101000000-00000000"
    durable = DurableExecution(InMemoryDurableStorage())
    task = Task("x", durable_execution=durable)
    with pytest.raises(UserError, match="but the task's execution"):
        agent.continue_run(task=task, run_id="other")
    with pytest.raises(UserError, match="pass one of them"):
        Task("x", durable_execution=durable, durable_execution_id="other")
