"""SIGKILL `perdure worker --engine temporal` mid-run; a new worker finishes without redoing finished work.

What Temporal guarantees, and what is asserted: an activity whose completion reached the server is
never executed again; the one in flight when the worker died (started, not completed) is retried,
so its side effect may happen twice. A tool call counts as finished when the model request after it
was sent (the workflow only continues once the tool's completion is recorded); a model request
counts as finished when the tool call it asked for started.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from perdure.engines import get_engine
from perdure.records import ExecutionStatus
from support.paths import SRC, TESTS
from support.temporal_server import lines, require_temporalio

require_temporalio()  # before anything imports temporalio

from perdure.engines.temporal import TemporalEngine  # noqa: E402

pytestmark = pytest.mark.crash

_KILL_AFTER = 3  # ledger lines (tool executions) before the kill


def _start_worker(address: str, queue: str, log: Path, app: str = "agent") -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]),
        # a dead worker is noticed within a second: heartbeat and sticky-queue timeouts
        "PERDURE_TEMPORAL_HEARTBEAT_TIMEOUT": "1",
        "PERDURE_TEMPORAL_ACTIVITY_TIMEOUT": "20",
        "PERDURE_TEMPORAL_STICKY_TIMEOUT": "1",
        "PERDURE_TEST_STEP_SECONDS": "0.4",
    }
    command = [sys.executable, "-m", "perdure.cli", "worker", "--engine", "temporal"]
    command += ["--address", address, "--task-queue", queue, "--app", f"support.temporal_crash_app:{app}"]
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, cwd=TESTS, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_sigkill_mid_run_then_new_worker_finishes_without_redoing_finished_units(
    temporal_env: str, temporal_address: str, files: dict[str, Path], tmp_path: Path
) -> None:
    crash_app = importlib.import_module("support.temporal_crash_app")
    engine = get_engine("temporal")
    assert isinstance(engine, TemporalEngine)
    log = tmp_path / "workers.log"
    execution_id = f"crash-{uuid.uuid4().hex[:12]}"
    first = _start_worker(address=temporal_address, queue=temporal_env, log=log)
    second: subprocess.Popen[bytes] | None = None
    try:
        await engine.start_agent(crash_app.agent, "work", execution_id=execution_id)
        deadline = time.monotonic() + 30
        while len(lines(files["ledger"])) < _KILL_AFTER:
            assert first.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the first worker never ran three tool calls"
            await asyncio.sleep(0.01)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        assert first.returncode == -signal.SIGKILL
        ledger_at_kill, requests_at_kill = lines(files["ledger"]), lines(files["requests"])

        second = _start_worker(address=temporal_address, queue=temporal_env, log=log)
        run = await asyncio.wait_for(engine.result(execution_id), timeout=45)
    finally:
        _stop(first)
        if second is not None:
            _stop(second)
        await engine.close()

    assert run.status is ExecutionStatus.COMPLETED, run.error
    steps = crash_app.STEPS
    assert run.output == f"done {steps}"
    tools, requests = Counter(lines(files["ledger"])), Counter(lines(files["requests"]))
    assert set(tools) == {f"tool {i}" for i in range(steps)}
    assert set(requests) == {f"request {n}" for n in range(steps + 1)}

    finished_tools = [i for i in range(steps) if f"request {i + 1}" in requests_at_kill]
    finished_requests = [n for n in range(steps + 1) if f"tool {n}" in ledger_at_kill]
    assert len(finished_tools) >= _KILL_AFTER - 1 and len(finished_requests) >= _KILL_AFTER
    for i in finished_tools:
        assert tools[f"tool {i}"] == 1, f"finished tool call {i} ran again: {lines(files['ledger'])}"
    for n in finished_requests:
        assert requests[f"request {n}"] == 1, (
            f"finished model request {n} was re-sent: {lines(files['requests'])}"
        )
    # at most the one unit in flight at the kill ran twice; everything after it ran once
    assert sum(tools.values()) - steps <= 1
    assert sum(requests.values()) - (steps + 1) <= 1


async def test_a_non_idempotent_tool_in_flight_at_the_kill_is_not_run_again(
    temporal_env: str, temporal_address: str, files: dict[str, Path], tmp_path: Path
) -> None:
    """`idempotent=False` tools get one activity attempt: the call lost with its worker fails the run."""
    crash_app = importlib.import_module("support.temporal_crash_app")
    engine = get_engine("temporal")
    assert isinstance(engine, TemporalEngine)
    log = tmp_path / "workers.log"
    execution_id = f"charge-{uuid.uuid4().hex[:12]}"
    first = _start_worker(address=temporal_address, queue=temporal_env, log=log, app="charging")
    second: subprocess.Popen[bytes] | None = None
    try:
        await engine.start_agent(crash_app.charging, "charge", execution_id=execution_id)
        deadline = time.monotonic() + 30
        while len(lines(files["ledger"])) < 2:
            assert first.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the first worker never ran two tool calls"
            await asyncio.sleep(0.01)
        os.kill(first.pid, signal.SIGKILL)  # `charge 1` is in flight: it sleeps after its ledger line
        first.wait(timeout=10)
        second = _start_worker(address=temporal_address, queue=temporal_env, log=log, app="charging")
        run = await asyncio.wait_for(engine.result(execution_id), timeout=45)
    finally:
        _stop(first)
        if second is not None:
            _stop(second)
        await engine.close()

    assert run.status is ExecutionStatus.FAILED
    assert run.error is not None and "idempotent=False run at most once" in run.error, run.error
    assert lines(files["ledger"]) == ["charge 0", "charge 1"]  # never twice, nothing after the lost call
