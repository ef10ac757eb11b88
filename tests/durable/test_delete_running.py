"""Deleting executions while a real `perdure worker` runs them: nothing comes back, no effect repeats.

40 interrupted executions (made honestly, see `support.workers.interrupt_many`) are resumed by a worker
process with four slots whose tools sleep, so four of them are mid-run. The test then deletes all 40:
half with `delete_state(force=True)` (two of them running), the rest with `cleanup_old_executions(0)`
and non-forced deletes, which must leave the running ones alone (`ExecutionLeasedError`, nothing
changed). The worker finishes what it still holds; a second `perdure worker --once --retry-failed`
pass must find nothing to resume. Every tool call and live model request appends its idempotency key
to a per-process ledger (`support.worker_app`), so a resurrected execution would show as a repeated key.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from perdure.errors import ExecutionLeasedError
from perdure.records import ExecutionStatus
from perdure.storage import storage_from_url
from support.storages import backend_url
from support.workers import interrupt_many, ledger_lines, start_worker, stop, wait_until

pytestmark = pytest.mark.crash

COUNT = 40


@pytest.mark.parametrize("kind", ["file", "sqlite", "redis", "postgres"])
def test_forty_deletes_while_a_worker_runs_them(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = backend_url(kind, tmp_path, request)
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    monkeypatch.setenv("WORKER_LEDGER_DIR", str(ledger))
    storage = storage_from_url(url)
    ids = interrupt_many(storage, COUNT, at="reserve")  # three slow tools left in each

    def running() -> list[str]:
        return sorted(h.execution_id for h in storage.list_executions() if h.lease_owner)

    options = ("--concurrency", "4", "--poll-interval", "0.1", "--lease-ttl", "2", "--log-level", "ERROR")
    worker = start_worker(url, ledger, *options, slow=0.3)
    try:
        wait_until(lambda: len(running()) >= 4 or worker.poll() is not None, 60, "four running executions")
        busy = running()[:4]
        idle = [i for i in ids if i not in busy]
        forced, rest = busy[:2] + idle[:18], busy[2:] + idle[18:]

        for execution_id in forced:
            assert storage.delete_state(execution_id, force=True) is True
        started = time.monotonic()
        storage.cleanup_old_executions(0)  # deletes the rest that is not running, skips the others
        refused = []
        for execution_id in rest:
            before = storage.load_state(execution_id)
            if before is None:
                continue  # cleaned up
            try:
                deleted = storage.delete_state(execution_id)
            except ExecutionLeasedError as exc:
                after = storage.load_state(execution_id)
                assert after is not None and after.lease_owner == before.lease_owner == exc.owner
                refused.append(execution_id)
            else:  # only when its run finished between the two calls (never in practice)
                assert deleted and before.lease_owner is not None
        assert time.monotonic() - started < 1.0  # the refused ones were still running
        assert set(busy[2:]) <= set(refused)

        # The worker finishes what it still runs; then it has nothing left to do.
        wait_until(
            lambda: (
                all(
                    h.status is ExecutionStatus.COMPLETED and not h.lease_owner
                    for h in storage.list_executions()
                )
                or worker.poll() is not None
            ),
            60,
            "the surviving executions to complete",
        )
    finally:
        code, err = stop(worker)
    assert code == 0, err[-3000:]

    second = start_worker(
        url, ledger, "--once", "--retry-failed", "--concurrency", "4", "--log-level", "ERROR"
    )
    code, err = stop(second, sig=None, timeout=120)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]

    survivors = {h.execution_id: h for h in storage.list_executions()}
    assert sorted(survivors) == sorted(refused)  # 0 deleted executions resurrected
    assert all(h.status is ExecutionStatus.COMPLETED for h in survivors.values())
    for execution_id in set(ids) - set(refused):
        assert storage.load_state(execution_id) is None
        assert storage.load_steps(execution_id) == []
    assert storage.get_stats()["total_executions"] == len(refused)

    units = ledger_lines(ledger)
    repeated = [key for key, n in Counter(key for _, key, _ in units).items() if n > 1]
    assert repeated == []  # 0 effects repeated
    tools = Counter(key.split(":", 1)[0] for kind_, key, _ in units if kind_ == "tool")
    assert {eid: tools[eid] for eid in refused} == dict.fromkeys(refused, 3)  # reserve, charge, notify
    # A running execution deleted by force stops at its next write: at most the call in flight ran.
    assert all(n <= 1 for eid, n in tools.items() if eid not in refused), tools
    storage.close()
