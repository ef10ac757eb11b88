"""SIGKILL a Prefect worker mid-run: a new worker completes the run without redoing finished work."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from prefect_workers import start_worker, stop

from perdure.engines import get_engine
from perdure.records import ExecutionStatus

pytestmark = pytest.mark.crash


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_sigkill_mid_run_then_a_new_worker_completes(
    prefect_settings: dict[str, str], tmp_path: Path
) -> None:
    import prefect_app

    ledger, requests, marker = tmp_path / "ledger", tmp_path / "requests", tmp_path / "hang"
    marker.touch()
    env = {
        **prefect_settings,
        "LEDGER": str(ledger),
        "REQUESTS": str(requests),
        "CALLS": "4",
        "HANG_AT": "2",
        "HANG_ONCE": str(marker),
    }
    engine = get_engine("prefect")
    execution_id = f"crash-{uuid.uuid4().hex[:8]}"
    first = start_worker(env, tmp_path / "worker1.log")
    try:
        await engine.start_agent(prefect_app.agent, "go", execution_id=execution_id)
        deadline = time.monotonic() + 60
        while "step 2" not in _lines(ledger):  # steps 0 and 1 finished, step 2 hangs
            assert time.monotonic() < deadline, (tmp_path / "worker1.log").read_text()
            await asyncio.sleep(0.05)
        first.kill()
        first.wait(timeout=30)
    finally:
        stop(first)
    assert _lines(ledger) == ["step 0", "step 1", "step 2"]
    assert _lines(requests) == ["0", "1", "2"]
    before = await engine.describe(execution_id)
    assert before is not None and before["metadata"]["state"] == "RUNNING"  # the dead worker's run

    marker.unlink()  # the re-run of step 2 does not hang
    second = start_worker(env, tmp_path / "worker2.log")
    try:
        run = await asyncio.wait_for(engine.result(execution_id, wait=True), timeout=60)
    finally:
        stop(second)

    assert run.status is ExecutionStatus.COMPLETED, run
    assert run.output == "finished 4 calls"
    # Finished tool calls (0, 1) and model requests (0, 1, 2) replayed from Prefect's task cache; the
    # interrupted tool call (2) ran again (at least once), then the rest ran once.
    assert _lines(ledger) == ["step 0", "step 1", "step 2", "step 2", "step 3"]
    assert _lines(requests) == ["0", "1", "2", "3", "4"]
    assert run.info["flow_run_id"] == before["metadata"]["flow_run_id"]  # the same flow run, re-run
    after = await engine.describe(execution_id)
    assert after is not None and after["attempts"] == 2


async def test_cancel_a_running_run(prefect_settings: dict[str, str], tmp_path: Path) -> None:
    import prefect_app

    ledger, marker = tmp_path / "ledger", tmp_path / "hang"
    marker.touch()
    env = {**prefect_settings, "LEDGER": str(ledger), "CALLS": "4", "HANG_AT": "1", "HANG_ONCE": str(marker)}
    engine = get_engine("prefect")
    execution_id = f"cancel-running-{uuid.uuid4().hex[:8]}"
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        await engine.start_agent(prefect_app.agent, "go", execution_id=execution_id)
        deadline = time.monotonic() + 60
        while "step 1" not in _lines(ledger):
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            await asyncio.sleep(0.05)
        await engine.cancel(execution_id, "operator")
        run = await engine.result(execution_id, wait=True)
        assert run.status is ExecutionStatus.CANCELLED, run
        marker.unlink()  # the abandoned tool thread returns; its result goes nowhere
        await asyncio.sleep(1.0)
        assert _lines(ledger) == ["step 0", "step 1"]
        assert (await engine.result(execution_id, wait=False)).status is ExecutionStatus.CANCELLED
    finally:
        stop(worker)


async def test_a_stopping_worker_hands_its_runs_back(
    prefect_settings: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prefect_app

    ledger, marker = tmp_path / "ledger", tmp_path / "hang"
    marker.touch()
    env = {**prefect_settings, "LEDGER": str(ledger), "CALLS": "3", "HANG_AT": "1", "HANG_ONCE": str(marker)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(prefect_app, "CALLS", 3)
    engine = get_engine("prefect")
    execution_id = f"handback-{uuid.uuid4().hex[:8]}"
    serving = asyncio.create_task(engine.serve([prefect_app.agent]))  # a worker in this process
    await engine.start_agent(prefect_app.agent, "go", execution_id=execution_id)
    deadline = time.monotonic() + 60
    while "step 1" not in _lines(ledger):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    serving.cancel()  # what `perdure worker` does on SIGTERM
    with pytest.raises(asyncio.CancelledError):
        await serving
    info = await engine.describe(execution_id)
    assert info is not None and info["metadata"]["state"] == "SCHEDULED"

    marker.unlink()
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        run = await asyncio.wait_for(engine.result(execution_id, wait=True), timeout=60)
    finally:
        stop(worker)
    assert run.status is ExecutionStatus.COMPLETED and run.output == "finished 3 calls"
    assert _lines(ledger) == ["step 0", "step 1", "step 1", "step 2"]
