"""`perdure.operations`: the actions the CLI and the dashboard share, on SQLite, PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from perdure import operations as ops
from perdure.durable import DurableExecution
from perdure.errors import (
    ExecutionCancelledError,
    ExecutionCompletedError,
    ExecutionConflictError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    UserError,
)
from perdure.records import ExecutionStatus, StepKind
from perdure.storage import DurableExecutionStorage, storage_from_url
from support import actions_app
from support.storages import backend_url


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DurableExecutionStorage]:
    monkeypatch.setenv("ACTIONS_LEDGER", str(tmp_path / "ledger"))
    storage = storage_from_url(backend_url(request.param, tmp_path, request))
    yield storage
    storage.close()


async def test_approve_and_deny_are_recorded_then_a_resume_acts_on_them(
    store: DurableExecutionStorage, tmp_path: Path
) -> None:
    await actions_app.start(store, "approvals", "ap")
    first = await ops.approve(store, "ap", "call-0-0", {"amount": 50, "to": "bob"})
    assert (first.ready, first.waiting, first.head and first.head.status) == (
        False,
        ["call-0-1"],
        ExecutionStatus.PAUSED,
    )
    with pytest.raises(ExecutionConflictError, match="decided already"):
        await ops.deny(store, "ap", "call-0-0")
    with pytest.raises(ExecutionConflictError, match="no call 'nope'"):
        await ops.approve(store, "ap", "nope")
    with pytest.raises(ExecutionConflictError, match="paused waiting"):
        await ops.resume(store, "ap", actions_app.agents)
    last = await ops.deny(store, "ap", "call-0-1", "not today")
    assert last.ready and last.head is not None and last.head.status is ExecutionStatus.SUCCESS
    assert actions_app.read_ledger(tmp_path / "ledger") == []  # nothing ran yet: decisions are signals
    with pytest.raises(UserError, match="pass the agent"):
        await ops.resume(store, "ap")
    outcome = await ops.resume(store, "ap", actions_app.agents)
    assert outcome.status is ExecutionStatus.COMPLETED
    assert outcome.output == "done: transfer=sent 50 to bob; close=not today"
    assert actions_app.read_ledger(tmp_path / "ledger") == ["transfer 50 bob"]
    with pytest.raises(ExecutionCompletedError):
        await ops.approve(store, "ap", "call-0-0")
    with pytest.raises(ExecutionCompletedError):
        await ops.resume(store, "ap", actions_app.agents)


async def test_a_partial_decision_merges_with_continue_durable(store: DurableExecutionStorage) -> None:
    await actions_app.start(store, "approvals", "mix")
    await ops.approve(store, "mix", "call-0-0")
    durable = DurableExecution(store, execution_id="mix", auto_cleanup=False)
    result = await durable.resume_agent_async(actions_app.approvals, approvals={"call-0-1": False})
    assert result.output == "done: transfer=sent 100 to bob; close=The tool call was denied."


async def test_resolve_done_rerun_abort(store: DurableExecutionStorage, tmp_path: Path) -> None:
    for execution_id in ("done", "rerun", "abort"):
        actions_app.FAIL_PAY.append(1)
        with pytest.raises(ConnectionError):
            await actions_app.start(store, "payments", execution_id)
    with pytest.raises(ExecutionConflictError, match="no interrupted"):
        await ops.resolve(store, "done", "call-0-0", "done")
    with pytest.raises(UserError):
        await ops.resolve(store, "done", "call-1-0", "maybe")  # type: ignore[arg-type]
    await ops.resolve(store, "done", "call-1-0", "done", "paid 7 by hand")
    assert (await ops.resume(store, "done", actions_app.agents)).output == (
        "done: notify=notified a; pay=paid 7 by hand"
    )
    await ops.resolve(store, "rerun", "call-1-0", "rerun")
    assert (
        await ops.resume(store, "rerun", actions_app.agents)
    ).output == "done: notify=notified a; pay=paid 7"
    aborted = await ops.resolve(store, "abort", "call-1-0", "abort")
    assert aborted.head is not None and aborted.head.status is ExecutionStatus.CANCELLED
    with pytest.raises(ExecutionCancelledError):
        await ops.resume(store, "abort", actions_app.agents)
    assert actions_app.read_ledger(tmp_path / "ledger").count("pay 7") == 4  # 3 interrupted + 1 rerun


async def test_cancel_idle_completed_and_running_elsewhere(store: DurableExecutionStorage) -> None:
    await actions_app.interrupt_slow(store, "idle")
    outcome = await ops.cancel(store, "idle", "no longer needed", requested_by="alice")
    assert outcome.state == "cancelled"
    head = await store.load_state_async("idle")
    assert head is not None and head.status is ExecutionStatus.CANCELLED and head.error is not None
    assert "by alice: no longer needed" in head.error.message
    assert (await ops.cancel(store, "idle")).state == "already_cancelled"
    report = await ops.recover(store, actions_app.agents)
    assert "idle" not in report.recovered and "idle" not in report.failed
    await actions_app.start(store, "approvals", "done")
    await ops.approve(store, "done", "call-0-0")
    await ops.approve(store, "done", "call-0-1")
    await ops.resume(store, "done", actions_app.agents)
    with pytest.raises(ExecutionCompletedError):
        await ops.cancel(store, "done")
    with pytest.raises(ExecutionNotFoundError):
        await ops.cancel(store, "missing")


async def test_delete_fork_and_retry_failed(store: DurableExecutionStorage) -> None:
    actions_app.FAIL_PAY.append(1)
    with pytest.raises(ConnectionError):
        await actions_app.start(store, "payments", "f1")
    await store.acquire_lease_async("f1", "someone-else", 30)
    with pytest.raises(ExecutionLeasedError):
        await ops.delete(store, "f1")
    await store.release_lease_async("f1", "someone-else")
    steps = await store.load_steps_async("f1")
    notify_seq = next(s.seq for s in steps if s.kind is StepKind.TOOL_CALL)
    child = await ops.fork(store, "f1", notify_seq)
    seen: list[tuple[int, int, str]] = []
    report = await ops.retry_failed(store, actions_app.agents, progress=lambda *a: seen.append(a))
    # f1 needs a decision about its interrupted payment; the fork is not failed, so not retried
    assert report.paused == ["f1"] and seen == [(1, 1, "f1")]
    assert (await ops.resume(store, child, actions_app.agents)).status is ExecutionStatus.COMPLETED
    await ops.delete(store, "f1")
    with pytest.raises(ExecutionNotFoundError):
        await ops.delete(store, "f1")
