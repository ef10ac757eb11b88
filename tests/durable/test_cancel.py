"""Cooperative cancel of a run in another process: it stops at its next unit boundary, on 3 backends.

A real subprocess runs the `slow` agent (`first`, the sync `slow` in a thread, `last`) with a short
lease (heartbeat every 0.5 s). The test cancels from its own process while `slow` runs: `slow`
finishes and is journaled once, `last` never runs, the head ends `cancelled` naming who and why.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perdure import DurableExecution
from perdure.errors import ExecutionCompletedError
from perdure.records import ExecutionStatus, StepKind
from perdure.storage import storage_from_url
from support import actions_app
from support.paths import SRC, TESTS
from support.storages import backend_url

LEASE_TTL = 1.5
SLOW = 2.0


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
async def test_cancel_stops_a_running_subprocess_at_the_next_unit(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = backend_url(kind, tmp_path, request)
    ledger = tmp_path / "ledger"
    env = {
        **os.environ,
        "ACTIONS_LEDGER": str(ledger),
        "ACTIONS_SLOW": str(SLOW),
        "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]),
    }
    code = f"from support import actions_app; actions_app.run_slow({url!r}, 'run-1', {LEASE_TTL})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    storage = storage_from_url(url)
    try:
        deadline = time.monotonic() + 30
        while "slow-started" not in actions_app.read_ledger(ledger):
            assert time.monotonic() < deadline and proc.poll() is None, "the slow tool never started"
            await asyncio.sleep(0.05)
        asked = time.monotonic()
        outcome = await DurableExecution.cancel_async("run-1", storage, "deploy rollback", requested_by="ops")
        assert outcome.state == "requested"
        while (
            head := await storage.load_state_async("run-1")
        ) is None or head.status is not ExecutionStatus.CANCELLED:
            assert time.monotonic() - asked < LEASE_TTL / 3 + SLOW + 3, head
            await asyncio.sleep(0.05)
        stopped = time.monotonic() - asked
        assert stopped <= LEASE_TTL / 3 + SLOW + 1.5
        assert proc.wait(timeout=30) != 0  # the run raised ExecutionCancelledError
        assert b"ExecutionCancelledError" in (proc.stderr.read() if proc.stderr else b"")
        assert actions_app.read_ledger(ledger) == ["first", "slow-started", "slow-effect"]
        steps = await storage.load_steps_async("run-1")
        tools = [s.name for s in steps if s.kind is StepKind.TOOL_CALL]
        assert tools == ["tool:first", "tool:slow"]  # the running tool journaled once, nothing after it
        assert head.error is not None and "by ops: deploy rollback" in head.error.message
        assert head.error.type.endswith("ExecutionCancelledError")
        assert await storage.cancel_request_async("run-1") is None
        report = await DurableExecution.recover_interrupted_async(storage, actions_app.agents, min_idle=0)
        assert not report.recovered and not report.failed
    finally:
        if proc.poll() is None:
            proc.kill()
        await storage.close_async()


async def test_cancel_of_idle_interrupted_and_completed(tmp_path: Path) -> None:
    storage = storage_from_url(f"sqlite:///{tmp_path / 'c.db'}")
    await actions_app.interrupt_slow(storage, "idle")
    durable = DurableExecution(storage, execution_id="idle", auto_cleanup=False)
    outcome = await durable.cancel_async(reason="not needed")
    assert outcome.state == "cancelled" and outcome.head is not None
    assert outcome.head.status is ExecutionStatus.CANCELLED
    sync = DurableExecution.cancel("idle", storage)
    assert sync.state == "already_cancelled"
    done = DurableExecution(storage, execution_id="done", auto_cleanup=False)
    await done.run_agent_async(actions_app.payments, "go")
    with pytest.raises(ExecutionCompletedError):
        await DurableExecution.cancel_async("done", storage)
    await storage.close_async()


async def test_cancel_requested_while_idle_between_checks_is_honoured_at_attempt_start(
    tmp_path: Path,
) -> None:
    """A request left on an unleased execution (the race cancel() closes) stops the next attempt at once."""
    storage = storage_from_url(f"sqlite:///{tmp_path / 'r.db'}")
    await actions_app.interrupt_slow(storage, "racy")
    assert await storage.request_cancel_async("racy", "by bob: late")
    from perdure.errors import ExecutionCancelledError

    with pytest.raises(ExecutionCancelledError, match="by bob: late"):
        await DurableExecution(storage, execution_id="racy", auto_cleanup=False).resume_agent_async(
            actions_app.slow_agent
        )
    head = await storage.load_state_async("racy")
    assert head is not None and head.status is ExecutionStatus.CANCELLED
    assert [s.name for s in await storage.load_steps_async("racy") if s.kind is StepKind.TOOL_CALL] == []
    await storage.close_async()
