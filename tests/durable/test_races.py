"""Races: eight processes try to run one interrupted execution at the same moment; exactly one does.

The execution is interrupted in-process (its journal holds the first model request and the first tool
call), then eight real processes wait on a start file and all resume it at once, either directly
(`DurableExecution.resume_agent`) or through a recovery pass (`recover_interrupted`). The remaining
tools are slow, so the winner holds the lease while the others arrive. The side-effect ledger counts
every live model request and tool call by idempotency key: each must appear exactly once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from perdure.storage import storage_from_url
from support import race_app, worker_app
from support.paths import SRC, TESTS
from support.storages import backend_url
from support.workers import ledger_lines

pytestmark = pytest.mark.crash

RACERS = 8


@pytest.mark.parametrize(
    ("kind", "mode"),
    [
        ("sqlite", "resume"),
        ("file", "resume"),
        ("redis", "resume"),
        ("postgres", "resume"),
        # Recovery passes race through the same lease; two backends keep the suite's time in check.
        ("sqlite", "recover"),
        ("postgres", "recover"),
    ],
)
def test_eight_processes_one_execution_exactly_one_runs_it(
    kind: str, mode: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = backend_url(kind, tmp_path, request)
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    monkeypatch.setenv("WORKER_LEDGER_DIR", str(ledger))
    storage = storage_from_url(url)
    asyncio.run(worker_app.interrupt(storage, "race-1", "charge"))
    before = Counter(k for k, _, _ in ledger_lines(ledger))
    assert before == {"model": 2, "tool": 1}  # model#1, reserve, model#2 journaled; charge crashed

    go = tmp_path / "go"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC)]),
        "WORKER_LEDGER_DIR": str(ledger),
        "SLOW_TOOLS": "0.5",
    }
    code = (
        "import sys; from support import race_app; "
        f"sys.exit(race_app.main([{mode!r}, {url!r}, 'race-1', {str(go)!r}]))"
    )
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            cwd=TESTS,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(RACERS)
    ]
    try:
        for racer in racers:  # all imported and connected before the start signal
            assert racer.stdout is not None
            assert racer.stdout.readline().strip() == "ready", racer.stderr.read() if racer.stderr else ""
        go.touch()
        results = [racer.communicate(timeout=120) for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
    codes = [racer.returncode for racer in racers]
    assert codes.count(race_app.RAN) == 1, (codes, [err[-2000:] for _, err in results])
    assert set(codes) <= {race_app.RAN, race_app.LEASED, race_app.COMPLETED}, (codes, results)

    units = ledger_lines(ledger)
    duplicates = [key for key, n in Counter(key for _, key, _ in units).items() if n > 1]
    assert duplicates == []
    after = Counter(k for k, _, _ in units)
    # The winner made the two remaining tool calls and model requests #3 and #4; nobody else ran any.
    assert after == {"model": 4, "tool": 3}
    new_pids = {pid for _, _, pid in units} - {str(os.getpid())}
    assert len(new_pids) == 1

    head = storage.load_state("race-1")
    assert head is not None
    assert head.status.value == "completed"
    assert head.attempts == 2  # the interrupted run and exactly one resume
    assert head.lease_owner is None
    storage.close()


def test_racers_see_the_lease_while_the_winner_runs(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A late racer that arrives mid-run is refused by the lease (not by the completed status)."""
    url = backend_url("sqlite", tmp_path, request)
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    monkeypatch.setenv("WORKER_LEDGER_DIR", str(ledger))
    storage = storage_from_url(url)
    asyncio.run(worker_app.interrupt(storage, "race-2", "reserve"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC)]),
        "WORKER_LEDGER_DIR": str(ledger),
        "SLOW_TOOLS": "2",
    }
    go = tmp_path / "go"
    go.touch()

    def start() -> subprocess.Popen[str]:
        code = (
            "import sys; from support import race_app; "
            f"sys.exit(race_app.main(['resume', {url!r}, 'race-2', {str(go)!r}]))"
        )
        return subprocess.Popen(
            [sys.executable, "-c", code], env=env, cwd=TESTS, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    winner = start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        head = storage.load_state("race-2")
        if head is not None and head.lease_owner is not None:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the first racer never took the lease")
    late = start()
    _, late_err = late.communicate(timeout=120)
    assert late.returncode == race_app.LEASED, late_err
    _, err = winner.communicate(timeout=120)
    assert winner.returncode == race_app.RAN, err
    assert Counter(k for k, _, _ in ledger_lines(ledger)) == {"model": 4, "tool": 3}
    storage.close()
