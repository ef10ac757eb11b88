"""`perdure worker`: real worker processes recover interrupted executions; shutdown hands them over.

The interrupted executions are made honestly: each one really runs in this process until a tool
raises `SimulatedCrash` (a `BaseException`, as if the process died there), so its journal holds the
model requests and tool calls finished before that point and its head says `success`. The crash
point rotates over the three tools. Workers then resume them; the side-effect ledger (one line per
live model request or tool call, keyed by the unit's idempotency key) shows whether any unit ran
twice, and `head.attempts == 2` shows that exactly one worker resumed each execution.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from perdure.durable.worker import Worker
from perdure.records import ExecutionRecord, ExecutionStatus
from perdure.storage import storage_from_url
from support import worker_app
from support.paths import SRC
from support.storages import backend_url
from support.workers import CRASH_POINTS, interrupt_many, ledger_lines, start_worker, stop, wait_until

pytestmark = pytest.mark.crash


def assert_each_unit_once(ledger: Path, executions: int) -> Counter[str]:
    units = ledger_lines(ledger)
    duplicates = [key for key, n in Counter(key for _, key, _ in units).items() if n > 1]
    assert duplicates == [], f"{len(duplicates)} units ran twice, e.g. {duplicates[:5]}"
    kinds = Counter(kind for kind, _, _ in units)
    assert kinds == {"model": 4 * executions, "tool": 3 * executions}
    return Counter(pid for _, _, pid in units)


# ---- many workers, many executions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "count"), [("sqlite", 500), ("postgres", 500), ("redis", 200), ("file", 100)]
)
def test_four_workers_recover_every_execution_exactly_once(
    kind: str, count: int, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = backend_url(kind, tmp_path, request)
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    monkeypatch.setenv("WORKER_LEDGER_DIR", str(ledger))
    storage = storage_from_url(url)
    started = time.monotonic()
    ids = interrupt_many(storage, count)
    created = time.monotonic()
    assert storage.get_stats()["by_status"]["success"] == count

    workers = [
        start_worker(url, ledger, "--concurrency", "2", "--poll-interval", "0.5", "--log-level", "WARNING")
        for _ in range(4)
    ]
    try:
        wait_until(
            lambda: (
                storage.get_stats()["by_status"]["completed"] == count
                or any(w.poll() is not None for w in workers)
            ),
            240,
            f"{count} completed executions",
        )
    finally:
        results = [stop(w) for w in workers]
    recovered = time.monotonic()
    for code, err in results:
        assert code == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]

    heads = {h.execution_id: h for h in storage.list_executions()}
    assert sorted(heads) == ids
    assert all(h.status is ExecutionStatus.COMPLETED for h in heads.values())
    assert {h.attempts for h in heads.values()} == {2}  # the interrupted run + exactly one resume
    assert all(h.lease_owner is None for h in heads.values())
    by_pid = assert_each_unit_once(ledger, count)
    print(
        f"\n{kind}: created {count} in {created - started:.1f}s, recovered in {recovered - created:.1f}s; "
        f"units per process: {sorted(by_pid.values())}"
    )
    storage.close()


# ---- shutdown -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
def test_sigterm_releases_leases_and_another_worker_takes_over_at_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = backend_url(kind, tmp_path, request)
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    monkeypatch.setenv("WORKER_LEDGER_DIR", str(ledger))
    storage = storage_from_url(url)
    ids = interrupt_many(storage, 4, at="reserve")

    # Slow tools: the worker is in the middle of all four executions when SIGTERM arrives, and with
    # no grace period it cancels them.
    first = start_worker(
        url, ledger, "--concurrency", "4", "--poll-interval", "0.2", "--grace-period", "0", slow=30
    )
    try:
        wait_until(
            lambda: (
                all((h := storage.load_state(i)) is not None and h.attempts == 2 for i in ids)
                or first.poll() is not None
            ),
            120,
            "the first worker to resume all four executions",
        )
        leased = [storage.load_state(i) for i in ids]
        assert all(h is not None and h.lease_owner for h in leased), leased
    finally:
        code, err = stop(first)
    assert code == 0, err[-3000:]
    assert "cancelled by shutdown" in err

    for execution_id in ids:
        head = storage.load_state(execution_id)
        assert head is not None
        assert head.status is ExecutionStatus.SUCCESS, head.error  # journal intact, not failed
        assert head.lease_owner is None  # released, not left to expire (lease TTL is 30s)

    # A second worker with the default 30s lease TTL finishes them in a single pass: nothing waited
    # for a lease to expire.
    second = start_worker(url, ledger, "--once", "--concurrency", "4")
    code, err = stop(second, sig=None, timeout=120)
    assert code == 0, err[-3000:]
    heads = [storage.load_state(i) for i in ids]
    assert all(h is not None and h.status is ExecutionStatus.COMPLETED for h in heads), heads
    assert {h.attempts for h in heads if h is not None} == {3}
    assert_each_unit_once(ledger, len(ids))
    storage.close()


def test_sigterm_with_grace_lets_running_executions_finish_and_takes_no_new_ones(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = backend_url("sqlite", tmp_path, request)
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    monkeypatch.setenv("WORKER_LEDGER_DIR", str(ledger))
    storage = storage_from_url(url)
    ids = interrupt_many(storage, 4, at="notify")  # one slow tool left per execution

    worker = start_worker(url, ledger, "--concurrency", "2", "--grace-period", "120", slow=4)
    try:
        wait_until(
            lambda: (
                sum(1 for i in ids if (h := storage.load_state(i)) and h.lease_owner) == 2
                or worker.poll() is not None
            ),
            120,
            "two executions running",
        )
        running = {i for i in ids if (h := storage.load_state(i)) and h.lease_owner}
    finally:
        code, err = stop(worker)
    assert code == 0, err[-3000:]
    for execution_id in ids:
        head = storage.load_state(execution_id)
        assert head is not None and head.lease_owner is None
        if execution_id in running:
            assert head.status is ExecutionStatus.COMPLETED, head
        else:  # never taken after SIGTERM
            assert head.status is ExecutionStatus.SUCCESS and head.attempts == 1, head
    storage.close()


# ---- in-process Worker --------------------------------------------------------------------------


async def test_worker_in_process_once_and_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_LEDGER_DIR", str(tmp_path))
    storage = storage_from_url(f"sqlite:///{tmp_path / 'w.db'}")
    for i, point in enumerate(CRASH_POINTS):
        await worker_app.interrupt(storage, f"ip-{i}", point)
    report = await Worker(storage, worker_app.agent, concurrency=2).run_async(once=True)
    assert sorted(report.recovered) == ["ip-0", "ip-1", "ip-2"]
    assert report.failed == {} and report.paused == []

    # A long-running worker stopped while it runs an execution: cancelled, lease released.
    await worker_app.interrupt(storage, "ip-slow", "reserve")
    monkeypatch.setenv("SLOW_TOOLS", "30")
    worker = Worker(storage, worker_app.agent, poll_interval=0.05, grace_period=0.2)
    task = asyncio.create_task(worker.run_async())
    for _ in range(600):
        if worker.running:
            break
        await asyncio.sleep(0.05)
    assert worker.running == ["ip-slow"]
    await asyncio.sleep(0.3)
    worker.stop()
    report = await asyncio.wait_for(task, 60)
    assert report.skipped["ip-slow"] == "cancelled by worker shutdown"
    head = await storage.load_state_async("ip-slow")
    assert head is not None and head.status is ExecutionStatus.SUCCESS and head.lease_owner is None
    storage.close()


async def test_worker_cleans_up_old_executions_on_a_schedule(tmp_path: Path) -> None:
    """`retention_days`: an old completed execution goes; an old running one and a recent one stay."""
    storage = storage_from_url(f"sqlite:///{tmp_path / 'retention.db'}")
    old = datetime.now(UTC) - timedelta(days=30)
    for eid in ("old-done", "old-running"):
        done = ExecutionStatus.COMPLETED if eid == "old-done" else ExecutionStatus.SUCCESS
        await storage.save_state_async(
            ExecutionRecord(execution_id=eid, status=done, updated_at=old, created_at=old)
        )
    await storage.save_state_async(ExecutionRecord(execution_id="recent", status=ExecutionStatus.COMPLETED))
    await storage.acquire_lease_async("old-running", "another-worker", 60)
    worker = Worker(storage, worker_app.agent, poll_interval=0.05, retention_days=7, cleanup_every=3600)
    task = asyncio.create_task(worker.run_async())
    for _ in range(200):
        if worker.cleaned:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # several polls: the next cleanup is an hour away, nothing more goes
    worker.stop()
    await asyncio.wait_for(task, 30)
    assert worker.cleaned == 1
    assert {h.execution_id for h in await storage.list_executions_async()} == {"old-running", "recent"}
    assert Worker(storage, worker_app.agent).retention_days is None  # off unless asked for
    storage.close()


# ---- operator commands --------------------------------------------------------------------------


def test_list_stats_show_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_LEDGER_DIR", str(tmp_path))
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    storage = storage_from_url(url)
    interrupt_many(storage, 3)
    storage.close()
    env = {**os.environ, "PYTHONPATH": str(SRC), "PERDURE_STORAGE": url}

    def perdure(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "perdure.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    stats = json.loads(perdure("stats", "--json"))
    assert stats["total_executions"] == 3 and stats["by_status"]["success"] == 3
    listed = json.loads(perdure("list", "--status", "success", "--limit", "2", "--json"))
    rows = listed["executions"]
    assert len(rows) == 2 and all(r["status"] == "success" and r["attempts"] == 1 for r in rows)
    assert listed["total"] == 3 and listed["next_cursor"]
    shown = json.loads(perdure("show", "w-0002", "--json"))
    assert shown["head"]["execution_id"] == "w-0002"
    assert shown["journal_size"] == 5  # model, reserve, model, charge, model; notify crashed
    assert [e["kind"] for e in shown["journal"]][:2] == ["model_request", "tool_call"]
    assert "w-0001" in perdure("list")  # the table form
    missing = subprocess.run(
        [sys.executable, "-m", "perdure.cli", "show", "nope"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 3 and "not found" in missing.stderr
