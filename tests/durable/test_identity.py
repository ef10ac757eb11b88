"""Resume identity: a resume either runs the code the journal was written by, or refuses loudly.

The cases reproduce what a new user hit before identities existed: resuming with an agent that lacks
the recorded tools completed the run with the model seeing "Unknown tool name"; a worker serving one
agent resumed another agent's execution and stored a string where a `Report` was expected; a
different prompt on resume went unnoticed; a completed handle silently ran a second prompt.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure import Agent, DurableExecution, Task, tool
from perdure.durable import PerdureDurability
from perdure.durable.recovery import recover_interrupted_async
from perdure.errors import (
    ExecutionCompletedError,
    JournalMismatchError,
    ToolNotFoundError,
    UnregisteredReferenceError,
)
from perdure.records import ExecutionStatus, StepKind
from perdure.registry import Registry
from perdure.storage import DurableExecutionStorage, InMemoryDurableStorage, SQLiteDurableStorage
from support.storages import PERSISTENT, make_factory

CALLS: Counter[str] = Counter()


class Crash(BaseException):
    """Stands in for the process dying mid-run (not an Exception: the engine records nothing)."""


CRASH_AT: set[str] = set()


def lookup(city: str) -> str:
    """Look up the weather."""
    CALLS["lookup"] += 1
    return f"sunny in {city}"


def book(city: str) -> str:
    """Book a trip."""
    if "book" in CRASH_AT:
        raise Crash
    CALLS["book"] += 1
    return f"booked {city}"


def book_v2(city: str, nights: int) -> str:
    """Book a trip for some nights (a changed schema)."""
    CALLS["book"] += 1
    return f"booked {city} for {nights}"


book_v2.__name__ = "book"


def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """lookup, then book, then answer (as text, or as the output tool when there is one)."""
    calls = sum(1 for m in messages if isinstance(m, ModelResponse))
    if calls == 0:
        return ModelResponse(parts=[ToolCallPart("lookup", {"city": "Paris"}, tool_call_id="c1")])
    if calls == 1:
        args: dict[str, Any] = {"city": "Paris"}
        if any(t.name == "book" and "nights" in str(t.parameters_json_schema) for t in info.function_tools):
            args["nights"] = 2
        return ModelResponse(parts=[ToolCallPart("book", args, tool_call_id="c2")])
    if info.output_tools:
        return ModelResponse(
            parts=[ToolCallPart(info.output_tools[0].name, {"text": "done"}, tool_call_id="o")]
        )
    return ModelResponse(parts=[TextPart("done")])


def make_agent(*tools: Any, name: str = "trips", output_type: Any = str, instructions: str = "Plan.") -> Any:
    return PydanticAgent(
        FunctionModel(script),
        name=name,
        tools=list(tools),
        output_type=output_type,
        instructions=instructions,
        capabilities=[PerdureDurability()],
    )


def interrupted(storage: DurableExecutionStorage, agent: Any = None, prompt: str = "Trip to Paris") -> str:
    """An execution that journaled `lookup` and died inside `book`."""
    durable = DurableExecution(storage, auto_cleanup=False)
    CRASH_AT.add("book")
    try:
        with pytest.raises(Crash):
            durable.run_agent(agent or make_agent(lookup, book), prompt)
    finally:
        CRASH_AT.clear()
    return durable.execution_id


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


@pytest.fixture(params=PERSISTENT)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DurableExecutionStorage]:
    """Every persistent backend: the identity travels in the head each of them stores."""
    storage = make_factory(request.param, tmp_path, request)()
    yield storage
    storage.close()


def _unchanged(storage: DurableExecutionStorage, execution_id: str, before: Any) -> None:
    after = storage.load_state(execution_id)
    assert after is not None
    assert after.model_dump(exclude={"lease_owner", "lease_expires_at"}) == before.model_dump(
        exclude={"lease_owner", "lease_expires_at"}
    )


def test_identity_is_recorded_at_the_first_run(store: DurableExecutionStorage) -> None:
    eid = interrupted(store)
    head = store.load_state(eid)
    assert head is not None and head.identity is not None
    identity = head.identity
    assert identity.agent_name == "trips"
    assert set(identity.tools) == {"lookup", "book"}
    assert identity.prompt_hash and identity.instructions_hash and identity.output_hash
    assert identity.models  # the FunctionModel's name


def test_missing_tool_is_refused_before_anything_runs(store: DurableExecutionStorage) -> None:
    eid = interrupted(store)
    before = store.load_state(eid)
    steps_before = store.load_steps(eid)
    with pytest.raises(ToolNotFoundError, match="book") as err:
        DurableExecution(store, execution_id=eid, auto_cleanup=False).resume_agent(make_agent(lookup))
    assert eid in str(err.value)
    _unchanged(store, eid, before)
    assert store.load_steps(eid) == steps_before
    assert Counter({"lookup": 1}) == CALLS  # nothing ran again


def test_changed_tool_schema_is_refused_and_named(store: DurableExecutionStorage) -> None:
    eid = interrupted(store)
    before = store.load_state(eid)
    with pytest.raises(JournalMismatchError) as err:
        DurableExecution(store, execution_id=eid, auto_cleanup=False).resume_agent(
            make_agent(lookup, book_v2)
        )
    message = str(err.value)
    assert eid in message and "tool 'book' schema" in message and "->" in message
    assert err.value.changes
    _unchanged(store, eid, before)
    assert CALLS["book"] == 0


def test_changed_output_type_is_refused(store: DurableExecutionStorage) -> None:
    class Report(BaseModel):
        text: str

    eid = interrupted(store)
    before = store.load_state(eid)
    with pytest.raises(JournalMismatchError, match="output type"):
        DurableExecution(store, execution_id=eid, auto_cleanup=False).resume_agent(
            make_agent(lookup, book, output_type=Report)
        )
    _unchanged(store, eid, before)


def test_changed_instructions_are_refused_before_the_first_request(store: DurableExecutionStorage) -> None:
    eid = interrupted(store)
    before = store.load_state(eid)
    with pytest.raises(JournalMismatchError, match="instructions"):
        DurableExecution(store, execution_id=eid, auto_cleanup=False).resume_agent(
            make_agent(lookup, book, instructions="Plan a cheap trip.")
        )
    _unchanged(store, eid, before)
    assert Counter({"lookup": 1}) == CALLS


def test_a_different_prompt_on_an_existing_execution_is_refused(store: DurableExecutionStorage) -> None:
    eid = interrupted(store)
    before = store.load_state(eid)
    with pytest.raises(JournalMismatchError, match="prompt"):
        DurableExecution(store, execution_id=eid, auto_cleanup=False).run_agent(
            make_agent(lookup, book), "Trip to Rome"
        )
    _unchanged(store, eid, before)


def test_allow_changes_accepts_and_records_a_deliberate_change(store: DurableExecutionStorage) -> None:
    eid = interrupted(store)
    attempt = DurableExecution(store, execution_id=eid, auto_cleanup=False).resume_agent(
        make_agent(lookup, book, instructions="Plan a cheap trip."), allow_changes={"instructions"}
    )
    assert attempt.output == "done" and Counter({"lookup": 1, "book": 1}) == CALLS
    head = store.load_state(eid)
    assert head is not None and head.identity is not None
    assert any("instructions" in c for change in head.identity.changes for c in change.changes)


def test_a_different_model_and_agent_name_are_allowed(store: DurableExecutionStorage) -> None:
    """Failover to another model is a legitimate resume; the agent's name alone is no mismatch."""
    eid = interrupted(store)

    def other_provider(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return script(messages, info)

    agent = PydanticAgent(
        FunctionModel(other_provider, model_name="backup-model"),
        name="RecoveryAgent",
        tools=[lookup, book],
        instructions="Plan.",
        capabilities=[PerdureDurability()],
    )
    attempt = DurableExecution(store, execution_id=eid, auto_cleanup=False).resume_agent(agent)
    assert attempt.output == "done" and Counter({"lookup": 1, "book": 1}) == CALLS
    head = store.load_state(eid)
    assert head is not None and head.identity is not None
    assert head.identity.models[-1].endswith("backup-model") and len(head.identity.models) == 2


def test_seed_recovery_agent_without_a_name_resumes_a_facade_execution(tmp_path: Path) -> None:
    storage = SQLiteDurableStorage(tmp_path / "seed.db")
    durable = DurableExecution(storage, auto_cleanup=False)
    task = Task(
        "Look up the weather in Paris and book the trip", tools=[lookup, book], durable_execution=durable
    )
    CRASH_AT.add("book")
    with pytest.raises(Crash):
        Agent("perdure:scripted", name="TripAgent").do(task)
    CRASH_AT.clear()
    out = Agent("perdure:scripted", name="RecoveryAgent").continue_durable(durable.execution_id, storage)
    assert "booked" in str(out) and Counter({"lookup": 1, "book": 1}) == CALLS


def test_completed_handle_is_never_reused_for_another_prompt() -> None:
    for auto_cleanup in (False, True):
        durable = DurableExecution(InMemoryDurableStorage(), auto_cleanup=auto_cleanup)
        assert durable.run_agent(make_agent(lookup, book), "Trip to Paris").output == "done"
        with pytest.raises(ExecutionCompletedError):
            durable.run_agent(make_agent(lookup, book), "Trip to Rome")
        assert CALLS["book"] == 1
        CALLS.clear()


async def test_worker_routes_by_recorded_agent_name(store: DurableExecutionStorage) -> None:
    """A worker serving agent A never resumes agent B's execution: left alone and reported."""

    class Report(BaseModel):
        text: str

    eid_a = interrupted(store, make_agent(lookup, book, name="trips"))
    eid_b = interrupted(store, make_agent(lookup, book, name="reports", output_type=Report))
    report = await recover_interrupted_async(store, make_agent(lookup, book, name="trips"), min_idle=0)
    assert report.recovered == [eid_a]
    assert report.not_served == {eid_b: "reports"}
    head_b = store.load_state(eid_b)
    assert head_b is not None and head_b.status is ExecutionStatus.SUCCESS and head_b.output is None


# ---- stored data never chooses code -------------------------------------------------------------


@tool
def fetch(source: str) -> str:
    """Fetch data."""
    CALLS["fetch"] += 1
    return f"rows of {source}"


def _tamper(storage: DurableExecutionStorage, eid: str, **task: Any) -> None:
    head = storage.load_state(eid)
    assert head is not None
    storage.save_state(head.model_copy(update={"task": head.task.model_copy(update=task)}))


def test_a_tampered_tool_reference_runs_nothing(tmp_path: Path) -> None:
    from perdure.records import ToolRef

    storage = SQLiteDurableStorage(tmp_path / "tamper.db")
    durable = DurableExecution(storage, auto_cleanup=False)
    CRASH_AT.add("book")
    with pytest.raises(Crash):
        Agent("perdure:scripted").do(
            Task("fetch 'x' then book it", tools=[fetch, book], durable_execution=durable)
        )
    CRASH_AT.clear()
    _tamper(storage, durable.execution_id, tools=[ToolRef(name="system", ref="os:system")])
    with pytest.raises(ToolNotFoundError, match="system") as err:
        Agent("perdure:scripted").continue_durable(durable.execution_id, storage)
    assert "nothing was imported" in str(err.value)


def test_a_tampered_response_format_is_not_imported(tmp_path: Path) -> None:
    storage = SQLiteDurableStorage(tmp_path / "tamper.db")
    durable = DurableExecution(storage, auto_cleanup=False)
    Agent("perdure:scripted").do(Task("fetch 'x'", tools=[fetch], durable_execution=durable))
    _tamper(storage, durable.execution_id, response_format="subprocess:getoutput")
    db_agent = Agent("perdure:scripted")
    with pytest.raises(UnregisteredReferenceError, match="subprocess:getoutput"):
        db_agent.continue_run(Task("fetch 'x'", durable_execution=durable))


def test_a_record_naming_an_unimported_module_imports_nothing(tmp_path: Path) -> None:
    """In a fresh process: a record naming a module with import-time side effects imports nothing."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_mod.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\n\ndef payload(source: str) -> str:\n    return 'x'\n"
    )
    storage_path = tmp_path / "evil.db"
    setup = f"""
        from perdure import Agent, DurableExecution, Task
        from perdure.records import ToolRef
        from perdure.storage import SQLiteDurableStorage

        storage = SQLiteDurableStorage({str(storage_path)!r})
        durable = DurableExecution(storage, execution_id="evil-1", auto_cleanup=False)
        class Died(BaseException):
            pass
        def payload(source: str) -> str:
            raise Died
        try:
            Agent("perdure:scripted").do(Task("payload 'x'", tools=[payload], durable_execution=durable))
        except Died:
            pass
        head = storage.load_state("evil-1")
        refs = [ToolRef(name="payload", ref="evil_mod:payload")]
        storage.save_state(head.model_copy(update={{"task": head.task.model_copy(update={{"tools": refs}})}}))
    """
    resume = f"""
        import sys
        from perdure import Agent
        from perdure.errors import ToolNotFoundError
        from perdure.storage import SQLiteDurableStorage
        try:
            Agent("perdure:scripted").continue_durable("evil-1", SQLiteDurableStorage({str(storage_path)!r}))
        except ToolNotFoundError as exc:
            print("refused:", exc)
        print("evil_mod" in sys.modules)
    """
    for code in (setup, resume):
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout and "evil_mod:payload" in proc.stdout
    assert proc.stdout.strip().endswith("False")
    assert not marker.exists()


def test_registered_tools_resolve_without_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = SQLiteDurableStorage(tmp_path / "reg.db")
    durable = DurableExecution(storage, auto_cleanup=False)
    CRASH_AT.add("book")
    with pytest.raises(Crash):
        Agent("perdure:scripted").do(
            Task("fetch 'x' then book it", tools=[fetch, book], durable_execution=durable)
        )
    CRASH_AT.clear()
    fresh = Registry()
    monkeypatch.setattr("perdure.agent.tools.registry", fresh)
    with pytest.raises(ToolNotFoundError):
        Agent("perdure:scripted").continue_durable(durable.execution_id, storage)
    # Registering (what importing the app module does) or passing tools= both work.
    out = Agent("perdure:scripted").continue_durable(durable.execution_id, storage, tools=[fetch, book])
    assert "booked" in str(out) and CALLS["fetch"] == 1 and CALLS["book"] == 1


# ---- keys are unique per call ---------------------------------------------------------------------


def test_a_model_reusing_tool_call_ids_gets_distinct_keys() -> None:
    """Two different calls with the same tool_call_id (in two responses) are two units."""
    seen: list[str] = []

    def pay(amount: int) -> str:
        from perdure import current_step

        seen.append(current_step().idempotency_key)
        return f"paid {amount}"

    def reuse(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = sum(1 for m in messages if isinstance(m, ModelResponse))
        if n < 2:
            return ModelResponse(parts=[ToolCallPart("pay", {"amount": 10 * (n + 1)}, tool_call_id="same")])
        return ModelResponse(parts=[TextPart("ok")])

    agent = PydanticAgent(FunctionModel(reuse), name="payer", tools=[pay], capabilities=[PerdureDurability()])
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    durable.run_agent(agent, "pay twice")
    steps = storage.load_steps(durable.execution_id)
    tool_steps = [s for s in steps if s.kind is StepKind.TOOL_CALL]
    assert [s.key for s in tool_steps] == ["tool:1/same", "tool:2/same"]
    assert [s.result["result"] for s in tool_steps] == ["paid 10", "paid 20"]
    assert len(set(seen)) == 2 and seen[0] == f"{durable.execution_id}:tool:1/same"
    # Replay (as after a crash before the end was recorded) hands each call its own result.
    head = storage.load_state(durable.execution_id)
    assert head is not None
    storage.save_state(head.model_copy(update={"status": ExecutionStatus.SUCCESS}))
    replayed = DurableExecution(storage, execution_id=durable.execution_id, auto_cleanup=False)
    attempt = replayed.resume_agent(agent)
    assert attempt.output == "ok" and len(seen) == 2
    assert attempt.replay.replayed_tool_calls == 2


def test_sync_wrapper_errors_carry_no_unrelated_chained_exception() -> None:
    storage = InMemoryDurableStorage()
    try:
        Agent("perdure:scripted").continue_durable("nope", storage)
    except Exception as exc:
        text = "".join(__import__("traceback").format_exception(exc))
        assert "no running event loop" not in text
    else:  # pragma: no cover
        raise AssertionError("expected an error")


def test_an_unregistered_model_instance_says_what_to_pass() -> None:
    from pydantic_ai.models.test import TestModel

    from perdure.errors import UserError

    other = TestModel(custom_output_text="from other")
    agent = PydanticAgent(TestModel(), name="m", capabilities=[PerdureDurability()])
    durable = DurableExecution(InMemoryDurableStorage())
    with pytest.raises(UserError, match=r"PerdureDurability\(models=\[") as err:
        durable.run_agent(agent, "hi", model=other)
    assert durable.execution_id in str(err.value)
    registered = PydanticAgent(TestModel(), name="m2", capabilities=[PerdureDurability(models=[other])])
    assert DurableExecution(InMemoryDurableStorage()).run_agent(registered, "hi", model=other).output == (
        "from other"
    )


@pytest.mark.parametrize("url", ["sqlite:///{tmp}/typo.db", "file://{tmp}/typo-states"])
def test_resuming_on_a_storage_that_does_not_exist_names_it_and_creates_nothing(
    url: str, tmp_path: Path
) -> None:
    from perdure.errors import StorageNotFoundError
    from perdure.storage import storage_from_url

    storage = storage_from_url(url.format(tmp=tmp_path))
    with pytest.raises(StorageNotFoundError, match="typo"):
        Agent("perdure:scripted").continue_durable("20261130000000-abcdef12", storage)
    with pytest.raises(StorageNotFoundError):
        DurableExecution.list_all_executions(storage)
    with pytest.raises(StorageNotFoundError):
        DurableExecution.get_execution_info("20261130000000-abcdef12", storage)
    assert list(tmp_path.iterdir()) == []


async def test_a_worker_refuses_a_tampered_record_once_and_runs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`perdure worker` path: a record naming `os:system` is refused, nothing runs, and it is not
    retried every poll until its head changes."""
    from perdure.durable.worker import Worker
    from perdure.records import ToolRef

    storage = SQLiteDurableStorage(tmp_path / "tamper.db")
    durable = DurableExecution(storage, auto_cleanup=False)
    CRASH_AT.add("book")
    with pytest.raises(Crash):
        await Agent("perdure:scripted", name="trips").do_async(
            Task("fetch 'x' then book it", tools=[fetch, book], durable_execution=durable)
        )
    CRASH_AT.clear()
    _tamper(storage, durable.execution_id, tools=[ToolRef(name="system", ref="os:system")])
    worker = Worker(storage, Agent("perdure:scripted", name="trips"), poll_interval=0.05, min_idle=0)
    task = asyncio.create_task(worker.run_async())
    await asyncio.sleep(0.6)  # about ten polls
    worker.stop()
    report = await task
    assert report.failed[durable.execution_id].startswith("refused: ToolNotFoundError")
    assert durable.execution_id in report.refused
    assert CALLS["book"] == 0 and CALLS["fetch"] == 1
    head = storage.load_state(durable.execution_id)
    assert head is not None and head.status is ExecutionStatus.SUCCESS and head.attempts == 1
    refusals = [r for r in caplog.records if "refused:" in r.getMessage()]
    assert len(refusals) == 1  # about ten polls, one attempt: not retried until the head changes
