"""In-process tests of the engine, the seed facade and the management API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure import Agent, DurableExecution, PerdureDurability, Task, tool
from perdure.durable import FileDurableStorage, InMemoryDurableStorage, SQLiteDurableStorage
from perdure.errors import (
    CorruptRecordError,
    ExecutionCompletedError,
    ExecutionNotFoundError,
    IncompatibleSchemaError,
    JournalMismatchError,
    SerializationError,
    ToolNotFoundError,
    UserError,
)
from perdure.models import ScriptedModel
from perdure.registry import Registry
from perdure.storage.base import DurableExecutionStorage

CALLS: Counter[str] = Counter()
FAIL_ON: set[str] = set()


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    FAIL_ON.clear()


def _effect(name: str) -> None:
    CALLS[name] += 1
    if name in FAIL_ON:
        raise RuntimeError(f"{name} is down")


@tool
def fetch_data(source: str) -> dict[str, Any]:
    """Fetch data."""
    _effect("fetch_data")
    return {"source": source, "rows": [1, 2, 3]}


@tool
def validate_data(data: dict[str, Any]) -> bool:
    """Validate data."""
    _effect("validate_data")
    return True


@tool
def transform_data(data: dict[str, Any]) -> dict[str, Any]:
    """Transform data."""
    _effect("transform_data")
    return {"rows": [r * 2 for r in data.get("rows") or [1]]}


@tool
def store_results(data: dict[str, Any]) -> str:
    """Store data."""
    _effect("store_results")
    return "storage_id_123"


TOOLS = [fetch_data, validate_data, transform_data, store_results]
PROMPT = "Fetch the data from 'database.csv', validate, transform and store the results"


class Report(BaseModel):
    storage_id: str
    rows: int = 0


class CountingModel(ScriptedModel):
    def __init__(self, **kwargs: Any) -> None:
        self.requests = 0

        def count(n: int) -> None:
            self.requests += 1

        super().__init__(on_request=count, **kwargs)


@pytest.fixture(params=["memory", "file", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> DurableExecutionStorage:
    if request.param == "memory":
        return InMemoryDurableStorage()
    if request.param == "file":
        return FileDurableStorage(path=str(tmp_path / "states"))
    return SQLiteDurableStorage(db_path=str(tmp_path / "x.db"), table_name="durable_executions")


def _uninterrupted_output() -> Any:
    task = Task(PROMPT, tools=TOOLS)
    out = Agent(ScriptedModel()).do(task)
    CALLS.clear()
    return out


def test_seed_flow_failure_then_continue_durable_with_new_agent(storage: DurableExecutionStorage) -> None:
    expected = _uninterrupted_output()
    durable = DurableExecution(storage=storage, auto_cleanup=False, debug=True)
    task = Task(PROMPT, tools=TOOLS, durable_execution=durable)
    assert task.durable_execution_id == durable.execution_id
    FAIL_ON.add("transform_data")
    first_model = CountingModel()
    with pytest.raises(RuntimeError, match="transform_data is down"):
        Agent(first_model, name="WorkflowAgent").do(task)

    info = durable.get_execution_info()
    assert info is not None
    assert info["status"] == "failed"
    assert info["step_name"] == "tool:transform_data"
    assert info["error_details"]["type"] == "RuntimeError"
    assert "transform_data is down" in info["error"]
    assert "Traceback" in info["error_details"]["traceback"]
    assert info["usage"]["requests"] == 3 and info["usage"]["tool_calls"] == 2
    assert info == DurableExecution.get_execution_info(task.durable_execution_id, storage)

    FAIL_ON.clear()
    second_model = CountingModel()
    result = Agent(second_model, name="RecoveryAgent").continue_durable(durable.execution_id, storage)
    assert result == expected
    # Journaled before the failure: fetch, validate (once each). transform retried once, store once.
    assert Counter(fetch_data=1, validate_data=1, transform_data=2, store_results=1) == CALLS
    # 3 requests were journaled; the resume pays only for the remaining ones (5 total uninterrupted).
    assert first_model.requests + second_model.requests == 5 + 0
    assert second_model.requests == 2
    final = DurableExecution.get_execution_info(durable.execution_id, storage)
    assert final is not None and final["status"] == "completed"
    assert final["replay"]["replayed_model_requests"] == 3
    assert final["replay"]["replayed_tool_calls"] == 2
    assert final["replay"]["tokens_saved"] > 0
    assert final["output"] == expected
    assert final["usage"]["requests"] == 5 and final["usage"]["tool_calls"] == 4


def test_same_agent_resumes_after_exception_and_retry_resumes_from_journal() -> None:
    storage = InMemoryDurableStorage()
    FAIL_ON.add("validate_data")
    model = CountingModel()
    agent = Agent(model, retry=1)  # one attempt: no internal resume
    task = Task(PROMPT, tools=TOOLS, durable_execution=DurableExecution(storage, auto_cleanup=False))
    with pytest.raises(RuntimeError):
        agent.do(task)
    FAIL_ON.clear()
    # do() on the same task continues the same execution from its journal.
    out = agent.do(task)
    assert out == task.response
    assert CALLS["fetch_data"] == 1 and CALLS["validate_data"] == 2
    assert model.requests == 5


def test_agent_retry_resumes_instead_of_restarting() -> None:
    storage = InMemoryDurableStorage()
    state = {"failures": 1}

    @tool
    def flaky(source: str) -> str:
        """A tool that fails once."""
        CALLS["flaky"] += 1
        if state["failures"]:
            state["failures"] -= 1
            raise ConnectionError("reset by peer")
        return "ok"

    model = CountingModel()
    task = Task("Fetch and flaky", tools=[fetch_data, flaky], durable_execution=DurableExecution(storage))
    # retry = total attempts (the seed's meaning): the second attempt resumes from the journal.
    out = Agent(model, retry=2).do(task, return_output=True)
    assert Counter(fetch_data=1, flaky=2) == CALLS
    assert model.requests == 3  # not 3 + the 2 before the failure
    assert out.attempts == 2 and out.replay.replayed_model_requests == 2


def test_agent_retry_counts_attempts_not_extra_resumes() -> None:
    state = {"failures": 2}

    @tool
    def flaky(source: str) -> str:
        """A tool that fails twice."""
        CALLS["flaky"] += 1
        if state["failures"]:
            state["failures"] -= 1
            raise ConnectionError("reset by peer")
        return "ok"

    agent = Agent(ScriptedModel(), retry=2)
    task = Task("Fetch and flaky", tools=[fetch_data, flaky], durable_execution=DurableExecution())
    with pytest.raises(ConnectionError):
        agent.do(task)
    assert CALLS["flaky"] == 2 and CALLS["fetch_data"] == 1
    assert agent.last_run_output is not None and agent.last_run_output.attempts == 2


def test_any_pydantic_ai_agent_with_the_capability() -> None:
    calls: list[str] = []

    def fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if not any(isinstance(m, ModelResponse) for m in messages):
            return ModelResponse(parts=[ToolCallPart("a", {}), ToolCallPart("b", {})])
        return ModelResponse(parts=[TextPart("done")])

    agent = PydanticAgent(FunctionModel(fn), name="plain", capabilities=[PerdureDurability()])
    fail = {"b": True}

    @agent.tool_plain
    def a() -> str:
        calls.append("a")
        return "A"

    @agent.tool_plain
    def b() -> str:
        calls.append("b")
        if fail["b"]:
            raise OSError("disk full")
        return "B"

    durable = DurableExecution(InMemoryDurableStorage(), auto_cleanup=False)
    with pytest.raises(OSError):
        durable.run_agent(agent, "go")
    fail["b"] = False
    attempt = durable.resume_agent(agent)
    assert attempt.output == "done"
    assert calls == ["a", "b", "b"]
    assert attempt.replay.replayed_tool_calls == 1 and attempt.replay.replayed_model_requests == 1
    # Outside an execution the same agent is an ordinary pydantic-ai agent.
    assert agent.run_sync("go").output == "done"


def test_structured_response_format_roundtrips(storage: DurableExecutionStorage) -> None:
    durable = DurableExecution(storage, auto_cleanup=False)
    FAIL_ON.add("store_results")
    task = Task(PROMPT, tools=TOOLS, response_format=Report, durable_execution=durable)
    with pytest.raises(RuntimeError):
        Agent(ScriptedModel()).do(task)
    FAIL_ON.clear()
    out = Agent(ScriptedModel()).continue_durable(durable.execution_id, storage)
    assert isinstance(out, Report) and out.storage_id
    # do() on a completed task returns the stored output without running anything.
    before = sum(CALLS.values())
    again = Agent(ScriptedModel()).do(task)
    assert again == out and sum(CALLS.values()) == before


def test_auto_cleanup_removes_completed_execution() -> None:
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage)  # seed default: auto_cleanup=True
    Agent(ScriptedModel()).do(Task(PROMPT, tools=TOOLS, durable_execution=durable))
    assert storage.load_state(durable.execution_id) is None
    assert storage.load_steps(durable.execution_id) == []


def test_checkpoint_advances_with_step_index_and_names(storage: DurableExecutionStorage) -> None:
    durable = DurableExecution(storage, auto_cleanup=False)
    seen: list[tuple[int, str, str]] = []

    def observe(step: Any, replayed: bool) -> None:
        head = storage.load_state(durable.execution_id)
        assert head is not None
        seen.append((head.step_index, head.step_name, head.status.value))

    agent = Agent(ScriptedModel())._build(
        model=ScriptedModel(), tools=TOOLS, output_type=None, instructions=None
    )
    durable.run_agent(agent, PROMPT, on_unit=observe)
    assert [s[0] for s in seen] == list(range(9))
    assert seen[0][1:] == ("model_request", "success")
    assert seen[1][1] == "tool:fetch_data"
    assert seen[7][1] == "tool:store_results"
    info = durable.get_execution_info()
    assert info is not None and info["status"] == "completed" and info["step_index"] == 8


def test_debug_logs_checkpoints_and_recovery(caplog: pytest.LogCaptureFixture) -> None:
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False, debug=True)
    FAIL_ON.add("transform_data")
    with caplog.at_level(logging.INFO, logger="perdure"), pytest.raises(RuntimeError):
        Agent(ScriptedModel()).do(Task(PROMPT, tools=TOOLS, durable_execution=durable))
    assert "checkpoint: step 0 model_request journaled" in caplog.text
    assert "tool:transform_data failed" in caplog.text
    FAIL_ON.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="perdure"):
        Agent(ScriptedModel(), debug=True).continue_durable(durable.execution_id, storage)
    assert "recovering: status=failed" in caplog.text
    assert "replayed step 1 tool:fetch_data from the journal" in caplog.text


# ---- management API --------------------------------------------------------------------------------


def test_list_stats_cleanup(storage: DurableExecutionStorage) -> None:
    ids = []
    for i in range(3):
        durable = DurableExecution(storage, auto_cleanup=False)
        ids.append(durable.execution_id)
        if i == 1:
            FAIL_ON.add("fetch_data")
        with contextlib.suppress(RuntimeError):
            Agent(ScriptedModel()).do(Task(PROMPT, tools=TOOLS, durable_execution=durable))
        FAIL_ON.clear()
    stats = storage.get_stats()
    assert stats["backend"] == storage.backend_name
    assert stats["total_executions"] == 3
    assert stats["by_status"]["completed"] == 2 and stats["by_status"]["failed"] == 1
    listed = DurableExecution.list_all_executions(storage)
    assert [e["execution_id"] for e in listed] == [ids[2], ids[1], ids[0]]
    failed = DurableExecution.list_all_executions(storage, status="failed")
    assert [e["execution_id"] for e in failed] == [ids[1]]
    assert failed[0]["step_name"] == "tool:fetch_data" and "fetch_data is down" in failed[0]["error"]
    assert len(DurableExecution.list_all_executions(storage, limit=2)) == 2
    assert asyncio.run(storage.cleanup_old_executions_async(older_than_days=7)) == 0
    assert storage.cleanup_old_executions(older_than_days=0) == 3
    assert storage.get_stats()["total_executions"] == 0
    assert asyncio.run(storage.delete_state_async(ids[0])) is False


async def test_sync_api_works_inside_running_loop() -> None:
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    out = Agent(ScriptedModel()).do(Task(PROMPT, tools=TOOLS, durable_execution=durable))
    assert out
    assert storage.get_stats()["by_status"]["completed"] == 1
    assert DurableExecution.list_all_executions(storage)[0]["status"] == "completed"
    out2 = await Agent(ScriptedModel()).do_async(Task(PROMPT, tools=TOOLS))
    assert out2 == out


# ---- bad input ---------------------------------------------------------------------------------------


def test_unknown_execution_id_is_typed_error(storage: DurableExecutionStorage) -> None:
    DurableExecution(storage, auto_cleanup=False).run_agent(  # the storage exists: something ran there
        Agent(ScriptedModel())._build(
            model=ScriptedModel(), tools=TOOLS, output_type=None, instructions=None
        ),
        PROMPT,
    )
    with pytest.raises(ExecutionNotFoundError, match="nope-1"):
        Agent(ScriptedModel()).continue_durable("nope-1", storage)
    assert DurableExecution.get_execution_info("nope-1", storage) is None


def test_resuming_completed_execution_is_typed_error(storage: DurableExecutionStorage) -> None:
    durable = DurableExecution(storage, auto_cleanup=False)
    Agent(ScriptedModel()).do(Task(PROMPT, tools=TOOLS, durable_execution=durable))
    with pytest.raises(ExecutionCompletedError, match=durable.execution_id):
        Agent(ScriptedModel()).continue_durable(durable.execution_id, storage)


def test_unencodable_tool_result_fails_step_and_keeps_journal(storage: DurableExecutionStorage) -> None:
    sock = socket.socket()
    try:

        @tool
        def open_conn(source: str) -> Any:
            """Returns something that is not data."""
            CALLS["open_conn"] += 1
            return sock

        durable = DurableExecution(storage, auto_cleanup=False)
        task = Task("Fetch then open_conn", tools=[fetch_data, open_conn], durable_execution=durable)
        with pytest.raises(SerializationError) as err:
            Agent(ScriptedModel()).do(task)
        assert durable.execution_id in str(err.value) and "tool:open_conn" in str(err.value)
        assert "socket" in str(err.value)
        info = durable.get_execution_info()
        assert info is not None and info["status"] == "failed" and info["step_name"] == "tool:open_conn"
        steps = storage.load_steps(durable.execution_id)
        assert [s.name for s in steps] == ["model_request", "tool:fetch_data", "model_request"]
    finally:
        sock.close()


def test_corrupt_and_newer_schema_records(tmp_path: Path) -> None:
    storage = SQLiteDurableStorage(db_path=str(tmp_path / "c.db"))
    good = DurableExecution(storage, auto_cleanup=False)
    Agent(ScriptedModel()).do(Task(PROMPT, tools=TOOLS, durable_execution=good))
    storage._put_raw_head("broken-1", b'{"execution_id": "broken-1", "status": "succ')
    with pytest.raises(CorruptRecordError, match="broken-1"):
        Agent(ScriptedModel()).continue_durable("broken-1", storage)
    head = storage.load_state(good.execution_id)
    assert head is not None
    future = head.model_dump(mode="json") | {"execution_id": "future-1", "schema_version": 99}
    import json

    storage._put_raw_head("future-1", json.dumps(future).encode())
    with pytest.raises(IncompatibleSchemaError, match="future-1"):
        Agent(ScriptedModel()).continue_durable("future-1", storage)
    # Listing and stats keep working, and the good execution is untouched.
    assert [e["execution_id"] for e in DurableExecution.list_all_executions(storage)] == [good.execution_id]
    assert storage.get_stats()["by_status"]["completed"] >= 1


def test_resume_with_missing_or_mismatched_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = InMemoryDurableStorage()

    def local_tool(source: str) -> str:  # not importable: defined inside a function
        CALLS["local_tool"] += 1
        raise RuntimeError("boom")

    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(RuntimeError):
        Agent(ScriptedModel()).do(Task("Call local_tool", tools=[local_tool], durable_execution=durable))
    with monkeypatch.context() as patch:  # as in a new process that never registered it
        patch.setattr("perdure.agent.tools.registry", Registry())
        with pytest.raises(ToolNotFoundError, match="local_tool") as err:
            Agent(ScriptedModel()).continue_durable(durable.execution_id, storage)
    assert durable.execution_id in str(err.value) and "tools=[local_tool]" in str(err.value)

    # A tool with the same name but a journal that disagrees: replay refuses instead of guessing.
    def other(source: str) -> str:
        return "x"

    other.__name__ = "local_tool"
    steps = storage.load_steps(durable.execution_id)
    assert [s.name for s in steps] == ["model_request"]
    ok = Agent(ScriptedModel()).continue_durable(durable.execution_id, storage, tools=[other])
    assert "local_tool" in ok


async def test_journal_entry_for_a_different_unit_is_refused() -> None:
    """Replay never hands a recorded result to a different kind of call (code changed under it)."""
    from perdure.durable.journal import JournalRun, UnitIdentity
    from perdure.records import ExecutionRecord, StepKind, StepRecord

    storage = InMemoryDurableStorage()
    head = ExecutionRecord(execution_id="mm-1", next_seq=1)
    recorded = StepRecord(
        execution_id="mm-1", seq=0, kind=StepKind.TOOL_CALL, name="tool:charge_card", key="model#1", result=1
    )
    run = JournalRun(storage, head, [recorded])

    async def body() -> Any:
        raise AssertionError("must not run")

    with pytest.raises(JournalMismatchError, match="mm-1") as err:
        await run.run_unit(UnitIdentity(StepKind.MODEL_REQUEST, "model_request", "model"), body)
    assert "tool:charge_card" in str(err.value) and "model_request" in str(err.value)


def test_model_required_and_bad_retry() -> None:
    with pytest.raises(UserError):
        Agent(None).do(Task("x"))
    with pytest.raises(UserError):
        Agent(ScriptedModel(), retry=-1)
    assert Agent(ScriptedModel(), retry=0).retry == 1  # the old "no extra resumes" still means one attempt


def test_errors_pickle() -> None:
    import pickle

    err = ToolNotFoundError("e-1", "t", "gone")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ToolNotFoundError) and back.execution_id == "e-1" and str(back) == str(err)


def test_journal_ahead_of_head_after_crash_between_the_two_writes(tmp_path: Path) -> None:
    """File backend: the journal entry is fsync'd before the head is replaced; a crash in between
    leaves the journal one step ahead. Resume must replay that step, not run it or collide with it.
    A journal further ahead than the backend's window is corruption: nothing runs. (The file backend's
    window is one batch; a backend whose batches are single entries has a window of one.)"""

    class SingleEntryFiles(FileDurableStorage):
        journal_may_lead_head = 1
        max_batch = 1

    storage = SingleEntryFiles(path=str(tmp_path / "states"))
    durable = DurableExecution(storage, auto_cleanup=False)
    FAIL_ON.add("validate_data")
    agent = Agent(ScriptedModel())._build(
        model=ScriptedModel(), tools=TOOLS, output_type=None, instructions=None
    )
    with pytest.raises(RuntimeError):
        durable.run_agent(agent, PROMPT)
    FAIL_ON.clear()
    steps = storage.load_steps(durable.execution_id)
    assert CALLS["fetch_data"] == 1
    failed = storage.load_state(durable.execution_id)
    assert failed is not None
    storage.save_state(failed.model_copy(update={"next_seq": len(steps) - 2}))
    with pytest.raises(CorruptRecordError, match=durable.execution_id):
        durable.resume_agent(agent)
    assert CALLS["fetch_data"] == 1
    # The head as it was before tool:fetch_data was journaled: the file backend's crash window.
    storage.save_state(failed.model_copy(update={"next_seq": len(steps) - 1}))
    attempt = durable.resume_agent(agent)
    assert CALLS["fetch_data"] == 1  # journaled, so replayed although the head did not count it
    assert attempt.head.usage.tool_calls == 4 and attempt.head.usage.requests == 5
    uninterrupted = DurableExecution(InMemoryDurableStorage(), auto_cleanup=False)
    assert uninterrupted.run_agent(agent, PROMPT).head.usage == attempt.head.usage
