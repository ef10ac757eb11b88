"""`recover_interrupted`: which executions it resumes, with which agent, and what it leaves alone.

Interrupted executions are real: either a subprocess SIGKILLs itself in the middle of a run (its lease
stays behind, owned by a dead process), or the run is interrupted in-process by `SimulatedCrash`, a
`BaseException` the engine does not record as a failure (journal intact, head `success`). The ledger
shows every live model request and tool call by idempotency key, so a unit that ran twice is visible.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import Tool

from perdure.durable import DurableExecution, PerdureDurability
from perdure.durable.recovery import RecoveryGaveUpError, RecoveryReport, recover_interrupted_async
from perdure.errors import UserError
from perdure.models import ScriptedModel
from perdure.records import ExecutionRecord, ExecutionStatus, TaskSnapshot
from perdure.storage import DurableExecutionStorage, storage_from_url
from support import worker_app
from support.paths import SRC, TESTS
from support.storages import backend_url
from support.workers import ledger_lines

ALL_BACKENDS = ["sqlite", "file", "redis", "postgres"]


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "ledger"
    directory.mkdir()
    monkeypatch.setenv("WORKER_LEDGER_DIR", str(directory))
    return directory


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[DurableExecutionStorage]:
    store = storage_from_url(f"sqlite:///{tmp_path / 'recovery.db'}")
    yield store
    store.close()


def units(ledger: Path) -> Counter[str]:
    """Live units by kind; fails when any unit ran twice."""
    lines = ledger_lines(ledger)
    assert [k for k, n in Counter(key for _, key, _ in lines).items() if n > 1] == []
    return Counter(kind for kind, _, _ in lines)


async def interrupted(
    storage: DurableExecutionStorage, *ids: str, at: str = "charge", facade: bool = True
) -> None:
    for execution_id in ids:
        await worker_app.interrupt(storage, execution_id, at, facade=facade)


async def head_of(storage: DurableExecutionStorage, execution_id: str) -> ExecutionRecord:
    head = await storage.load_state_async(execution_id)
    assert head is not None
    return head


# ---- real crashes, leases ------------------------------------------------------------------------


@pytest.mark.crash
@pytest.mark.parametrize("kind", ALL_BACKENDS)
async def test_sigkilled_run_is_taken_over_from_its_dead_owner(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, ledger: Path
) -> None:
    url = backend_url(kind, tmp_path, request)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC)]),
        "PERDURE_FAULT": "before_tool_call@charge",
    }
    code = f"import sys; from support import worker_app; sys.exit(worker_app.main([{url!r}, 'killed-1']))"
    crashed = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    storage = storage_from_url(url)
    try:
        head = await head_of(storage, "killed-1")
        # The dead process's lease is still there and would last 30s: recovery must not wait for it.
        assert head.status is ExecutionStatus.SUCCESS and head.lease_owner is not None
        assert head.lease_expires_at is not None
        report = await recover_interrupted_async(storage, worker_app.agent)
        assert report.recovered == ["killed-1"], report
        head = await head_of(storage, "killed-1")
        assert head.status is ExecutionStatus.COMPLETED and head.attempts == 2 and head.lease_owner is None
        assert units(ledger) == {"model": 4, "tool": 3}  # killed before charge's effect: nothing twice
    finally:
        await storage.close_async()


@pytest.mark.parametrize("kind", ALL_BACKENDS)
async def test_expired_lease_is_recovered_live_leases_are_skipped(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, ledger: Path
) -> None:
    storage = storage_from_url(backend_url(kind, tmp_path, request))
    try:
        await interrupted(storage, "expired", "remote-live", "local-live")
        await storage.acquire_lease_async("expired", "otherhost:1:a", 0.2)
        await storage.acquire_lease_async("remote-live", "otherhost:2:b", 60)
        # A live process of this host (this one) is never judged dead, whatever its lease says.
        await storage.acquire_lease_async("local-live", f"{socket.gethostname()}:{os.getpid()}:c", 60)
        await asyncio.sleep(0.3)
        report = await recover_interrupted_async(storage, worker_app.agent)
        assert report.recovered == ["expired"]
        assert report.skipped["remote-live"].startswith("leased by otherhost:2:b")
        assert report.skipped["local-live"].startswith(f"leased by {socket.gethostname()}:{os.getpid()}:c")
        assert (await head_of(storage, "remote-live")).lease_owner == "otherhost:2:b"
        assert units(ledger) == {"model": 6 + 2, "tool": 3 + 2}  # 3 starts (2 models, 1 tool) + one finish
    finally:
        await storage.close_async()


async def test_two_concurrent_recoveries_never_run_one_execution_twice(
    sqlite_store: DurableExecutionStorage, ledger: Path
) -> None:
    ids = [f"c-{i}" for i in range(8)]
    await interrupted(sqlite_store, *ids, at="reserve")
    first, second = await asyncio.gather(
        recover_interrupted_async(sqlite_store, worker_app.agent, concurrency=3, worker_id="one"),
        recover_interrupted_async(sqlite_store, worker_app.agent, concurrency=3, worker_id="one"),
    )
    assert sorted(first.recovered + second.recovered) == ids  # same worker id: owners still differ
    assert not set(first.recovered) & set(second.recovered)
    assert units(ledger) == {"model": 4 * 8, "tool": 3 * 8}
    assert {(await head_of(sqlite_store, i)).attempts for i in ids} == {2}


# ---- resolvers -----------------------------------------------------------------------------------


async def _async_resolve(head: ExecutionRecord) -> Any:
    await asyncio.sleep(0)
    return worker_app.resolve(head)


@pytest.mark.parametrize(
    "resolver",
    [
        pytest.param([worker_app.agent, worker_app.pydantic_agent], id="list-of-agents"),
        pytest.param(worker_app.agents_by_name, id="mapping"),
        pytest.param(worker_app.resolve, id="callable"),
        pytest.param(_async_resolve, id="async-callable"),
    ],
)
async def test_every_kind_of_resolver(
    sqlite_store: DurableExecutionStorage, ledger: Path, resolver: Any
) -> None:
    await interrupted(sqlite_store, "by-facade", facade=True)
    await interrupted(sqlite_store, "by-pydantic", facade=False)
    report = await recover_interrupted_async(sqlite_store, resolver)
    assert sorted(report.recovered) == ["by-facade", "by-pydantic"], report
    assert units(ledger) == {"model": 8, "tool": 6}
    for execution_id in ("by-facade", "by-pydantic"):
        head = await head_of(sqlite_store, execution_id)
        assert head.status is ExecutionStatus.COMPLETED and head.output.startswith("Completed 3 steps")


@pytest.mark.parametrize(
    ("resolver", "own", "other"),
    [
        pytest.param(worker_app.agent, "by-facade", "by-pydantic", id="perdure-agent"),
        pytest.param(worker_app.pydantic_agent, "by-pydantic", "by-facade", id="pydantic-agent"),
    ],
)
async def test_a_single_agent_serves_only_its_own_executions(
    sqlite_store: DurableExecutionStorage, ledger: Path, resolver: Any, own: str, other: str
) -> None:
    """Never resumed by the wrong agent: another agent's execution is left alone and reported."""
    await interrupted(sqlite_store, "by-facade", facade=True)
    await interrupted(sqlite_store, "by-pydantic", facade=False)
    report = await recover_interrupted_async(sqlite_store, resolver)
    assert report.recovered == [own]
    names = {"by-facade": "worker-app", "by-pydantic": "pyd-app"}
    assert report.not_served == {other: names[other]}
    assert (await head_of(sqlite_store, other)).status is ExecutionStatus.SUCCESS


async def test_resolvers_without_an_agent_skip_failing_resolvers_fail(
    sqlite_store: DurableExecutionStorage, ledger: Path
) -> None:
    await interrupted(sqlite_store, "e-1")
    report = await recover_interrupted_async(sqlite_store, {"other-app": worker_app.agent})
    assert report.not_served == {"e-1": "worker-app"} and not report.skipped
    report = await recover_interrupted_async(sqlite_store, lambda head: None)
    assert report.not_served == {"e-1": "worker-app"}

    def broken(head: ExecutionRecord) -> Any:
        raise LookupError("registry down")

    report = await recover_interrupted_async(sqlite_store, broken)
    assert report.failed == {"e-1": "agent resolver failed: LookupError: registry down"}
    report = await recover_interrupted_async(sqlite_store, lambda head: "not an agent")
    assert "expected a perdure Agent" in report.failed["e-1"]
    head = await head_of(sqlite_store, "e-1")  # nothing ran, nothing changed, lease given back
    assert head.status is ExecutionStatus.SUCCESS and head.attempts == 1 and head.lease_owner is None
    assert (await recover_interrupted_async(sqlite_store, worker_app.agent)).recovered == ["e-1"]


# ---- attempts, timeouts, statuses, idleness ------------------------------------------------------


async def test_max_attempts_marks_the_execution_failed(
    sqlite_store: DurableExecutionStorage, ledger: Path
) -> None:
    await interrupted(sqlite_store, "poison", "fine", at="reserve")
    await interrupted(sqlite_store, "poison", at="charge")  # interrupted again: 2 attempts
    report = await recover_interrupted_async(sqlite_store, worker_app.agent, max_attempts=2)
    assert report.recovered == ["fine"]
    assert report.failed == {"poison": "gave up after 2 attempts"}
    head = await head_of(sqlite_store, "poison")
    assert head.status is ExecutionStatus.FAILED and head.error is not None
    assert head.error.type.endswith(RecoveryGaveUpError.__name__)
    assert "gave up after 2 attempts" in head.error.message and head.lease_owner is None
    # Failed executions are only retried when asked, and not beyond max_attempts either.
    assert (await recover_interrupted_async(sqlite_store, worker_app.agent, max_attempts=2)).skipped == {}
    retry_failed = {"statuses": ("success", "failed"), "min_idle": 0}
    report = await recover_interrupted_async(sqlite_store, worker_app.agent, max_attempts=2, **retry_failed)
    assert report.skipped == {"poison": "max attempts reached (2)"}
    report = await recover_interrupted_async(sqlite_store, worker_app.agent, max_attempts=3, **retry_failed)
    assert report.recovered == ["poison"]
    assert units(ledger) == {"model": 8, "tool": 6}


async def test_timeout_cancels_the_resume_and_leaves_it_recoverable(
    sqlite_store: DurableExecutionStorage, ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await interrupted(sqlite_store, "slow", at="reserve")
    monkeypatch.setenv("SLOW_TOOLS", "30")
    started = time.monotonic()
    report = await recover_interrupted_async(sqlite_store, worker_app.agent, timeout=0.5)
    assert time.monotonic() - started < 20
    assert report.failed == {"slow": "timed out after 0.5s (cancelled; journal intact)"}
    head = await head_of(sqlite_store, "slow")
    assert head.status is ExecutionStatus.SUCCESS and head.error is None
    assert head.lease_owner is None and head.attempts == 2
    monkeypatch.setenv("SLOW_TOOLS", "0")
    report = await recover_interrupted_async(sqlite_store, worker_app.agent, timeout=60)
    assert report.recovered == ["slow"]
    assert units(ledger) == {"model": 4, "tool": 3}  # the cancelled tool never got to its effect


async def test_only_interrupted_statuses_are_resumed(
    sqlite_store: DurableExecutionStorage, ledger: Path
) -> None:
    ids = ["st-success", "st-failed", "st-paused", "st-completed", "st-cancelled"]
    await interrupted(sqlite_store, *ids)
    for execution_id in ids[1:]:
        head = await head_of(sqlite_store, execution_id)
        status = ExecutionStatus(execution_id.removeprefix("st-"))
        await sqlite_store.save_state_async(head.model_copy(update={"status": status}))
    report = await recover_interrupted_async(sqlite_store, worker_app.agent)
    assert report == RecoveryReport(recovered=["st-success"])
    # A fresh failure may be retried by its own process: by default it must be idle for lease_ttl.
    report = await recover_interrupted_async(sqlite_store, worker_app.agent, statuses=["success", "failed"])
    assert report.recovered == [] and report.skipped["st-failed"].startswith("idle for")
    report = await recover_interrupted_async(
        sqlite_store, worker_app.agent, statuses=["success", "failed"], min_idle=0
    )
    assert report == RecoveryReport(recovered=["st-failed"])
    for execution_id in ids[2:]:
        assert (await head_of(sqlite_store, execution_id)).attempts == 1
    for statuses in (["paused"], ["completed"], []):
        with pytest.raises(UserError, match="statuses"):
            await recover_interrupted_async(sqlite_store, worker_app.agent, statuses=statuses)


async def test_a_run_that_has_not_taken_its_lease_yet_is_left_alone(
    sqlite_store: DurableExecutionStorage, ledger: Path
) -> None:
    """A head with no attempt yet may belong to a run about to take its lease: wait `min_idle`."""
    task = TaskSnapshot(description=worker_app.PROMPT, agent_name="pyd-app")
    await sqlite_store.save_state_async(ExecutionRecord(execution_id="fresh", task=task))
    report = await recover_interrupted_async(sqlite_store, worker_app.resolve, lease_ttl=30)
    assert report.skipped["fresh"].startswith("idle for") and report.recovered == []
    report = await recover_interrupted_async(sqlite_store, worker_app.resolve, min_idle=0)
    assert report.recovered == ["fresh"]  # never started: the whole task runs, once
    assert units(ledger) == {"model": 4, "tool": 3}


async def test_delay_backs_off_executions_that_were_resumed_before(
    sqlite_store: DurableExecutionStorage, ledger: Path
) -> None:
    await interrupted(sqlite_store, "twice", at="reserve")
    await interrupted(sqlite_store, "twice", at="charge")  # attempts == 2: resumed once already
    await interrupted(sqlite_store, "once", at="reserve")
    report = await recover_interrupted_async(sqlite_store, worker_app.agent, delay=60)
    assert report.recovered == ["once"]
    assert report.skipped["twice"].endswith("waiting until 60.0s")
    assert (await recover_interrupted_async(sqlite_store, worker_app.agent, delay=0)).recovered == ["twice"]


async def test_limit_concurrency_and_sync_twin(sqlite_store: DurableExecutionStorage, ledger: Path) -> None:
    ids = [f"l-{i}" for i in range(5)]
    await interrupted(sqlite_store, *ids, at="notify")
    report = await recover_interrupted_async(sqlite_store, worker_app.agent, limit=2, concurrency=2)
    assert report.recovered == ids[:2]  # oldest first
    report = await asyncio.to_thread(DurableExecution.recover_interrupted, sqlite_store, worker_app.agent)
    assert isinstance(report, RecoveryReport) and report.recovered == ids[2:]
    with pytest.raises(UserError):
        await recover_interrupted_async(sqlite_store, worker_app.agent, concurrency=0)
    with pytest.raises(UserError):
        await recover_interrupted_async(sqlite_store, worker_app.agent, max_attempts=0)


# ---- an interrupted non-idempotent call pauses instead of running again --------------------------


async def transfer(amount: int) -> str:
    """Move money: not idempotent."""
    raise worker_app.SimulatedCrash("transfer")  # dies mid-effect: started, never recorded


async def test_interrupted_non_idempotent_call_ends_paused(sqlite_store: DurableExecutionStorage) -> None:
    agent: PydanticAgent[None, str] = PydanticAgent(
        ScriptedModel(),
        name="payments",
        tools=[Tool(transfer, metadata={"perdure": {"idempotent": False}})],
        capabilities=[PerdureDurability()],
    )
    durable = DurableExecution(sqlite_store, execution_id="pay-1", auto_cleanup=False)
    with pytest.raises(worker_app.SimulatedCrash):
        await durable.run_agent_async(agent, "Transfer 5 to bob.")
    report = await recover_interrupted_async(sqlite_store, {"payments": agent})
    assert report.paused == ["pay-1"] and report.recovered == [] and report.failed == {}
    head = await head_of(sqlite_store, "pay-1")
    assert head.status is ExecutionStatus.PAUSED and head.pending is not None
    assert head.pending.kind == "non_idempotent" and head.lease_owner is None
    # Paused executions wait for a human: recovery leaves them alone from now on.
    assert await recover_interrupted_async(sqlite_store, {"payments": agent}) == RecoveryReport()
