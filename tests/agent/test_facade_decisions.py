"""Human decisions through the seed facade: approvals (HITL) and interrupted non-idempotent calls.

Deterministic: the model is `facade_app.plan_model`, a FunctionModel that is a pure function of the
history. Every tool effect and live model request is a line in a ledger file, so the tests count
exactly what ran, also across processes (subprocesses run `tests/support/facade_app.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ToolReturnPart
from pydantic_ai.tools import DeferredToolRequests

from perdure import DurableExecution, Task, tool
from perdure.agent import Agent, AgentRunOutput
from perdure.agent.tools import to_pydantic_tool
from perdure.db import SqliteDatabase
from perdure.durable import CircuitBreaker, InMemoryDurableStorage, PerdureDurability, RetryPolicy
from perdure.durable.decisions import ToolResolution
from perdure.errors import (
    ExecutionAborted,
    ExecutionCompletedError,
    NonIdempotentReplayError,
    PerdureError,
    UserError,
)
from perdure.records import ExecutionStatus, StepKind
from support import facade_app as app
from support.paths import SRC, TESTS

APP = TESTS / "support" / "facade_app.py"


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ledger.txt"
    monkeypatch.setenv("LEDGER", str(path))
    monkeypatch.setenv("PHASE", "parent")
    monkeypatch.delenv("PERDURE_FAULT", raising=False)
    app.SEEN.clear()
    return path


def _counts(path: Path) -> Counter[str]:
    """Events per kind: `model`, `tool transfer`, ... (arguments dropped)."""
    counts: Counter[str] = Counter()
    for event in app.read_ledger(path):
        words = event.split()
        counts[" ".join(words[:2]) if words[0] == "tool" else words[0]] += 1
    return counts


def _run_app(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env, "PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}"}
    return subprocess.run(
        [sys.executable, str(APP), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _db(path: Path) -> SqliteDatabase:
    return SqliteDatabase(db_file=path, session_id="s-1", user_id="u-1")


# ---- tool options and agent options ----------------------------------------------------------------


def test_tool_options_become_perdure_metadata() -> None:
    policy = RetryPolicy(max_retries=2, retry_delay=0.0, jitter=0.0)

    @tool(name="pay", description="Pay.", retries=3, requires_approval=True, idempotent=False, retry=policy)
    def pay(amount: int) -> str:
        return "ok"

    @tool(idempotent=False)
    def only_non_idempotent() -> str:
        return "ok"

    def plain() -> str:
        return "ok"

    built = to_pydantic_tool(pay)
    assert built.name == "pay" and built.description == "Pay." and built.max_retries == 3
    assert built.requires_approval is True
    assert built.metadata == {"perdure": {"idempotent": False, "retry": policy}}
    # A non-idempotent tool opts out of the agent-wide tool retry policy unless it has its own.
    assert to_pydantic_tool(only_non_idempotent).metadata == {"perdure": {"idempotent": False, "retry": None}}
    # Defaults are left out, so a plain tool inherits the agent's settings (and is idempotent).
    assert to_pydantic_tool(plain).metadata is None
    assert to_pydantic_tool(tool(plain)).metadata is None
    assert to_pydantic_tool(built) is built
    with pytest.raises(UserError, match="RetryPolicy"):
        tool(retry=3)(plain)  # type: ignore[arg-type]


def test_agent_options_reach_the_capability_the_execution_and_the_output_type(
    tmp_path: Path, ledger: Path
) -> None:
    model_policy = RetryPolicy(max_retries=1, retry_delay=0.0, jitter=0.0)
    tool_policy = RetryPolicy(max_retries=2, retry_delay=0.0, jitter=0.0, retry_on_errors=(ValueError,))
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=1.0, name="test")
    db = _db(tmp_path / "opts.db")
    owners: list[str | None] = []
    tries: Counter[str] = Counter()

    def flaky(source: str) -> str:
        """Fails twice with ValueError, then works; records who holds the lease meanwhile."""
        tries["flaky"] += 1
        head = db.storage.load_state(app.current_step().execution_id)
        owners.append(head.lease_owner if head else None)
        if tries["flaky"] < 3:
            raise ValueError("not yet")
        return "ok"

    agent = Agent(
        app.plan_model([[("flaky", {"source": "x"}, "c-flaky")]]),
        db=db,
        retry_policy=model_policy,
        tool_retry_policy=tool_policy,
        circuit_breaker=breaker,
        worker_id="worker-7",
        lease_ttl=5.0,
    )
    built = agent._build(model=agent.model, tools=[flaky], output_type=None, instructions=None)
    capability = PerdureDurability.from_agent(built)
    assert capability is not None
    assert capability.retry is model_policy and capability.tool_retry is tool_policy
    assert capability.circuit_breaker is breaker
    assert DeferredToolRequests in built.output_type and str in built.output_type  # type: ignore[operator]

    task = Task("Call flaky", tools=[flaky])
    out = agent.do(task, return_output=True)
    assert out.completed and "flaky=ok[success]" in out.output
    assert tries["flaky"] == 3  # the agent-wide tool policy retried the plain tool durably
    assert owners == ["worker-7"] * 3
    assert task.durable_execution is not None and task.durable_execution.lease_ttl == 5.0
    steps = db.storage.load_steps(out.run_id or "")
    assert [s.kind for s in steps].count(StepKind.ATTEMPT) == 2

    # A resume can run under another lease owner (what a recovery worker does).
    @tool(requires_approval=True)
    def probe(source: str) -> str:
        """Records who holds the lease."""
        head = db.storage.load_state(app.current_step().execution_id)
        owners.append(head.lease_owner if head else None)
        return "probed"

    agent.model = app.plan_model([[("probe", {"source": "y"}, "c-probe")]])
    paused = Task("Probe", tools=[probe])
    assert isinstance(agent.do(paused), DeferredToolRequests)
    resumed = agent.continue_durable(
        paused.durable_execution_id or "",
        db.storage,
        tools=[probe],
        approvals={"c-probe": True},
        worker_id="recovery-1",
        lease_ttl=7.0,
    )
    assert "probe=probed[success]" in resumed and owners[-1] == "recovery-1"


def test_tool_retry_policy_of_a_tool_wins_over_the_agents(tmp_path: Path, ledger: Path) -> None:
    tries: Counter[str] = Counter()

    @tool(retry=RetryPolicy(max_retries=0))
    def fragile(source: str) -> str:
        """Never retried: its own policy says so."""
        tries["fragile"] += 1
        raise ValueError("broken")

    agent = Agent(
        app.plan_model([[("fragile", {"source": "x"}, "c-f")]]),
        db=_db(tmp_path / "f.db"),
        tool_retry_policy=RetryPolicy(max_retries=5, retry_delay=0.0, retry_on_errors=(ValueError,)),
    )
    with pytest.raises(ValueError, match="broken"):
        agent.do(Task("Call fragile", tools=[fragile]))
    assert tries["fragile"] == 1


def test_non_idempotent_tool_is_never_retried_automatically(tmp_path: Path, ledger: Path) -> None:
    """Neither the agent-wide tool policy nor `Agent(retry=N)` repeats a call that may have taken effect."""
    tries: Counter[str] = Counter()

    def pay(amount: int) -> str:
        tries["pay"] += 1
        raise ConnectionError("connection reset mid-request")

    agent = Agent(
        app.plan_model([[("pay", {"amount": 5}, "c-pay")]]),
        db=_db(tmp_path / "pay.db"),
        tool_retry_policy=RetryPolicy(max_retries=3, retry_delay=0.0),
        retry=3,
    )
    task = Task("Pay 5", tools=[tool(idempotent=False)(pay)])
    with pytest.raises(NonIdempotentReplayError, match="c-pay"):
        agent.do(task)
    assert tries["pay"] == 1
    out = agent.last_run_output
    assert out is not None and out.paused and out.attempts == 2
    assert task.paused and task.pending is not None and task.pending.kind == "non_idempotent"


# ---- approvals ------------------------------------------------------------------------------------


def test_single_round_approval_pauses_then_continues(tmp_path: Path, ledger: Path) -> None:
    db = _db(tmp_path / "hitl.db")
    agent = Agent(app.plan_model(app.APPROVAL_STEPS[:1]), db=db)
    task = app.new_task("approval")
    paused = agent.do(task)

    assert isinstance(paused, DeferredToolRequests)
    assert [(c.tool_name, c.tool_call_id, c.args_as_dict()) for c in paused.approvals] == [
        ("transfer", "c-transfer", {"amount": 100, "to": "bob"})
    ]
    assert task.paused and task.status is ExecutionStatus.PAUSED and task.response is paused
    assert task.pending is not None and task.pending.kind == "approval"
    assert [c.tool_call_id for c in task.pending.calls] == ["c-transfer"]
    run_id = task.durable_execution_id
    assert run_id is not None
    info = DurableExecution.get_execution_info(run_id, db.storage)
    assert info is not None and info["status"] == "paused"
    assert info["pending"]["calls"][0]["args"] == {"amount": 100, "to": "bob"}
    assert _counts(ledger) == Counter({"model": 1, "tool lookup": 1})  # transfer waits

    out = agent.continue_durable(run_id, db.storage, approvals={"c-transfer": True}, return_output=True)
    assert isinstance(out, AgentRunOutput) and out.completed
    assert "transfer=transferred 100 to bob[success]" in out.output
    assert _counts(ledger) == Counter({"model": 2, "tool lookup": 1, "tool transfer": 1})
    assert out.usage.requests == 2 and out.usage.tool_calls == 2
    assert DurableExecution.get_execution_info(run_id, db.storage)["status"] == "completed"  # type: ignore[index]


def test_two_rounds_with_a_deny_message_the_model_reads(tmp_path: Path, ledger: Path) -> None:
    db = _db(tmp_path / "hitl2.db")
    agent = app.new_agent(db, "approval")
    task = app.new_task("approval")
    first = agent.do(task)
    assert [c.tool_call_id for c in first.approvals] == ["c-transfer"]

    second = agent.continue_run(task=task, approvals={"c-transfer": True})
    assert isinstance(second, DeferredToolRequests)
    assert [(c.tool_name, c.args_as_dict()) for c in second.approvals] == [
        ("notify", {"message": "paid bob"})
    ]
    assert task.paused and task.pending is not None and task.pending.round == 1
    assert task.pending.calls[0].tool_call_id == "c-notify"

    final = agent.continue_run(task=task, approvals={"c-notify": "no spam, please"})
    assert task.status is ExecutionStatus.COMPLETED and task.response == final
    # The denial reached the model as the tool's result, and the tool never ran.
    denied = [p for p in app.tool_returns(app.SEEN[-1]) if p.tool_name == "notify"]
    assert len(denied) == 1 and isinstance(denied[0], ToolReturnPart)
    assert denied[0].content == "no spam, please" and denied[0].outcome == "denied"
    assert "notify=no spam, please[denied]" in final
    # Every tool ran at most once over the three rounds; each round paid for one new request only.
    assert _counts(ledger) == Counter({"model": 3, "tool lookup": 1, "tool transfer": 1})
    kinds = [
        s.key for s in db.storage.load_steps(task.durable_execution_id or "") if s.kind is StepKind.DECISION
    ]
    assert kinds == ["round:1", "round:2"]


def test_plain_false_denies_and_override_args_change_the_call(tmp_path: Path, ledger: Path) -> None:
    db = _db(tmp_path / "ovr.db")
    agent = app.new_agent(db, "approval")
    task = app.new_task("approval")
    agent.do(task)
    agent.continue_run(task=task, approvals={"c-transfer": {"amount": 50, "to": "bob"}})
    assert "tool transfer 50 bob" in app.read_ledger(ledger)
    final = agent.continue_run(task=task, approvals={"c-notify": False})
    assert "transfer=transferred 50 to bob[success]" in final
    assert "notify=" in final and "[denied]" in final
    assert _counts(ledger)["tool notify"] == 0


def test_wrong_approvals_are_user_errors_and_change_nothing(tmp_path: Path, ledger: Path) -> None:
    db = _db(tmp_path / "bad.db")
    agent = app.new_agent(db, "approval")
    task = app.new_task("approval")
    agent.do(task)
    run_id = task.durable_execution_id or ""
    with pytest.raises(UserError, match=r"missing decisions for \['c-transfer'\]"):
        agent.continue_run(run_id=run_id, approvals={})
    with pytest.raises(UserError, match=r"unknown call ids \['nope'\]"):
        agent.continue_run(run_id=run_id, approvals={"c-transfer": True, "nope": True})
    with pytest.raises(UserError, match="paused waiting for approval of: transfer"):
        agent.continue_run(run_id=run_id)
    with pytest.raises(UserError, match="paused waiting for approval"):
        agent.do(task)  # doing a paused task again needs the decisions too
    with pytest.raises(UserError, match="no interrupted non-idempotent call"):
        agent.continue_run(run_id=run_id, approvals={"c-transfer": True}, resolutions={"c-transfer": "rerun"})
    last = agent.last_run_output
    assert last is not None and last.run_id == run_id and last.paused
    assert task.paused
    head = db.storage.load_state(run_id)
    assert head is not None and head.status is ExecutionStatus.PAUSED
    assert _counts(ledger)["tool transfer"] == 0
    # Still resumable with the right decisions.
    agent.continue_run(run_id=run_id, approvals={"c-transfer": False})
    assert agent.continue_run(run_id=run_id, approvals={"c-notify": False}, return_output=True).completed
    with pytest.raises(ExecutionCompletedError):
        agent.continue_durable(run_id, db.storage, approvals={"c-notify": True})


def test_approval_tools_need_a_durable_task(ledger: Path) -> None:
    agent = Agent(app.plan_model(app.APPROVAL_STEPS))
    with pytest.raises(UserError, match="require approval"):
        agent.do(app.new_task("approval"))


def test_approvals_given_by_a_new_process(tmp_path: Path, ledger: Path) -> None:
    db_file = tmp_path / "cross.db"
    agent = app.new_agent(_db(db_file), "approval")
    task = app.new_task("approval")
    agent.do(task)
    run_id = task.durable_execution_id or ""

    proc = _run_app(
        "approve",
        str(db_file),
        run_id,
        json.dumps({"c-transfer": True}),
        env={"LEDGER": str(ledger), "PHASE": "child"},
    )
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child["status"] == "paused" and child["session_id"] == "s-1"
    assert [c["tool_call_id"] for c in child["pending"]["calls"]] == ["c-notify"]

    final = Agent(app.plan_model(app.APPROVAL_STEPS), db=_db(db_file)).continue_run(
        run_id=run_id, approvals={"c-notify": True}, return_output=True
    )
    assert final.completed and "notify=sent 'paid bob'[success]" in final.output
    lines = ledger.read_text().splitlines()
    assert [ln for ln in lines if "tool transfer" in ln] == ["child tool transfer 100 bob"]
    assert [ln for ln in lines if "tool lookup" in ln] == ["parent tool lookup acc-1"]
    assert _counts(ledger) == Counter({"model": 3, "tool lookup": 1, "tool transfer": 1, "tool notify": 1})


def test_approval_run_on_a_plain_pydantic_ai_agent_with_in_memory_storage(ledger: Path) -> None:
    """The engine API underneath the facade, for agents built by hand."""
    agent = PydanticAgent(
        app.plan_model(app.APPROVAL_STEPS[:1]),
        name="hand",
        tools=[to_pydantic_tool(t) for t in (app.lookup, app.transfer)],
        output_type=[str, DeferredToolRequests],
        capabilities=[PerdureDurability()],
    )
    durable = DurableExecution(InMemoryDurableStorage(), auto_cleanup=False)
    attempt = durable.run_agent(agent, app.PROMPTS["approval"])
    assert attempt.paused and isinstance(attempt.output, DeferredToolRequests)
    done = durable.resume_agent(agent, approvals={"c-transfer": True})
    assert not done.paused and "transferred 100" in done.output


# ---- non-idempotent tools ------------------------------------------------------------------------

CHARGE_RUN = "20260101000000-charge01"


@pytest.fixture(scope="module")
def crashed_charge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run SIGKILLed inside `charge`, after its effect and before its result was journaled."""
    where = tmp_path_factory.mktemp("charge")
    ledger = where / "ledger.txt"
    proc = _run_app(
        "start",
        str(where / "crash.db"),
        CHARGE_RUN,
        "charge",
        env={"LEDGER": str(ledger), "PERDURE_FAULT": "after_tool_side_effect@charge", "PHASE": "crashed"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert app.read_ledger(ledger) == ["model 1", "tool lookup acc-1", "model 2", "tool charge 42 4242"]
    return where


def _copy_crash(source: Path, target: Path, ledger: Path) -> SqliteDatabase:
    """An independent copy of the crashed database (the writer is dead, so the files are at rest)."""
    for item in source.iterdir():
        if item.name.startswith("crash.db"):
            shutil.copy2(item, target / item.name)
    shutil.copy2(source / "ledger.txt", ledger)
    return _db(target / "crash.db")


def _interrupted(agent: Agent) -> NonIdempotentReplayError:
    with pytest.raises(NonIdempotentReplayError) as err:
        agent.continue_run(run_id=CHARGE_RUN)
    return err.value


def test_kill_inside_non_idempotent_tool_stops_the_resume(
    crashed_charge: Path, tmp_path: Path, ledger: Path
) -> None:
    db = _copy_crash(crashed_charge, tmp_path, ledger)
    agent = app.new_agent(db, "charge")
    err = _interrupted(agent)
    text = str(err)
    assert CHARGE_RUN in text and "'charge'" in text and "c-charge" in text and "4242" in text
    assert "ToolResolution.done(result)" in text
    assert err.execution_id == CHARGE_RUN and err.tool_name == "charge"
    assert err.tool_args == {"amount": 42, "card": "4242"}

    out = agent.last_run_output
    assert out is not None and out.run_id == CHARGE_RUN and out.paused
    assert out.pending is not None and out.pending.kind == "non_idempotent"
    assert [(c.tool_name, c.tool_call_id, c.args) for c in out.pending.calls] == [
        ("charge", "c-charge", {"amount": 42, "card": "4242"})
    ]
    info = DurableExecution.get_execution_info(CHARGE_RUN, db.storage)
    assert info is not None and info["status"] == "paused" and info["pending"]["kind"] == "non_idempotent"
    # Resuming again without a decision stops again; nothing was charged a second time.
    _interrupted(app.new_agent(db, "charge"))
    with pytest.raises(UserError, match="not waiting for approvals"):
        agent.continue_run(run_id=CHARGE_RUN, approvals={"c-charge": True})
    with pytest.raises(UserError, match="no interrupted non-idempotent call"):
        agent.continue_run(run_id=CHARGE_RUN, resolutions={"c-other": ToolResolution.rerun()})
    assert _counts(ledger)["tool charge"] == 1 and _counts(ledger)["tool lookup"] == 1


@pytest.mark.parametrize("action", ["done", "rerun", "abort"])
def test_resolutions_of_an_interrupted_call(
    action: str, crashed_charge: Path, tmp_path: Path, ledger: Path
) -> None:
    db = _copy_crash(crashed_charge, tmp_path, ledger)
    _interrupted(app.new_agent(db, "charge"))
    agent = app.new_agent(db, "charge")  # the operator's decision, from a fresh agent
    resolution: dict[str, Any] = {
        "done": {"c-charge": ToolResolution.done("charged 42 to 4242 (confirmed by the bank)")},
        "rerun": {"c-charge": ToolResolution.rerun()},
        "abort": {"c-charge": "abort"},
    }[action]
    if action == "abort":
        with pytest.raises(ExecutionAborted, match="cancelled"):
            agent.continue_run(run_id=CHARGE_RUN, resolutions=resolution)
        head = db.storage.load_state(CHARGE_RUN)
        assert head is not None and head.status is ExecutionStatus.CANCELLED
        with pytest.raises(PerdureError, match="cancelled"):
            agent.continue_run(run_id=CHARGE_RUN)
        assert _counts(ledger)["tool charge"] == 1
        return
    out = agent.continue_run(run_id=CHARGE_RUN, resolutions=resolution, return_output=True)
    assert out.completed
    if action == "done":
        assert "charge=charged 42 to 4242 (confirmed by the bank)[success]" in out.output
        assert _counts(ledger)["tool charge"] == 1  # never ran again
    else:
        assert "charge=charged 42 to 4242[success]" in out.output
        assert _counts(ledger)["tool charge"] == 2  # exactly one deliberate re-run
    # The journaled lookup was replayed, never re-run; the decision is in the journal.
    assert _counts(ledger)["tool lookup"] == 1
    decisions = [s for s in db.storage.load_steps(CHARGE_RUN) if s.kind is StepKind.DECISION]
    assert [d.result["action"] for d in decisions] == [action]
    # Resuming the completed run returns its output without running anything.
    before = _counts(ledger)
    again = app.new_agent(db, "charge").continue_run(run_id=CHARGE_RUN, return_output=True)
    assert again.output == out.output and again.attempts == 0 and _counts(ledger) == before


def test_idempotent_tool_reruns_in_the_crash_window_with_the_same_idempotency_key(
    tmp_path: Path, ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At-least-once boundary: an idempotent tool killed after its effect runs again on resume; the
    stable idempotency key lets the external API apply the effect exactly once."""
    api = tmp_path / "api.json"
    monkeypatch.setenv("API_FILE", str(api))
    db_file = tmp_path / "book.db"
    run_id = "20260101000000-book0001"
    proc = _run_app(
        "start",
        str(db_file),
        run_id,
        "book",
        env={
            "LEDGER": str(ledger),
            "PERDURE_FAULT": "after_tool_side_effect@book",
            "PHASE": "crashed",
            "API_FILE": str(api),
        },
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    out = app.new_agent(_db(db_file), "book").continue_run(run_id=run_id, return_output=True)
    assert out.completed and "book=booked r101 (booking 1)[success]" in out.output
    runs = [e for e in app.read_ledger(ledger) if e.startswith("tool book")]
    assert len(runs) == 2  # ran again: its result was never journaled
    keys = {e.split("key=")[1] for e in runs}
    assert keys == {f"{run_id}:tool:1/c-book"}
    assert json.loads(api.read_text()) == {f"{run_id}:tool:1/c-book": "r101"}  # one effect
