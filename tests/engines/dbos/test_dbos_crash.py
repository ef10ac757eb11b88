"""SIGKILL a DBOS worker mid-run, start a new one: finished tool calls and model requests never run again.

The worker is `tests/support/dbos_app.py`, an agent module with only `PerdureDurability()` and
`PERDURE_ENGINE=dbos`. Every tool execution appends a ledger line with its idempotency key, every
model request a line with the number of tool results it saw; the counts come from those files.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from support.paths import ROOT, SRC

APP = ROOT / "tests" / "support" / "dbos_app.py"
pytestmark = pytest.mark.crash


class Worker:
    """Files and environment of one crash scenario."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.ledger = tmp_path / "ledger.txt"
        self.requests = tmp_path / "requests.txt"
        self.url = f"sqlite:///{tmp_path / 'dbos.sqlite'}"
        self.ledger.touch()
        self.requests.touch()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(SRC),
            "PERDURE_ENGINE": "dbos",
            "LEDGER": str(self.ledger),
            "REQUESTS": str(self.requests),
            **env,
        }
        self.cwd = tmp_path

    def lines(self, path: Path) -> list[str]:
        return path.read_text().splitlines()

    def start(self, mode: str, execution_id: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(APP), mode, self.url, execution_id],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def kill_after(self, proc: subprocess.Popen[str], ledger_lines: int, settle: float) -> None:
        """SIGKILL `proc` `settle` seconds after the ledger has `ledger_lines` lines."""
        deadline = time.monotonic() + 30
        while len(self.lines(self.ledger)) < ledger_lines:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited early: {proc.communicate()}")
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"worker too slow: {proc.communicate()}")
            time.sleep(0.01)
        time.sleep(settle)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL

    def recover(self, execution_id: str) -> dict[str, Any]:
        proc = self.start("recover", execution_id)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result


def test_sigkill_mid_run_reruns_no_finished_tool_call_or_model_request(tmp_path: Path) -> None:
    worker = Worker(tmp_path, CALLS="10", TOOL="step", TOOL_SLEEP="0.15")
    proc = worker.start("run", "crash-1")
    # 5 calls finished; the 6th is sleeping (before its ledger line) when the worker dies
    worker.kill_after(proc, ledger_lines=5, settle=0.07)
    before = worker.lines(worker.ledger)
    assert len(before) == 5
    requests_before = worker.lines(worker.requests)
    assert requests_before == [str(i) for i in range(6)]

    result = worker.recover("crash-1")

    assert result["status"] == "completed" and result["output"] == "finished 10 calls"
    ledger = worker.lines(worker.ledger)
    calls = Counter(line.split()[1] for line in ledger)
    assert calls == Counter({str(i): 1 for i in range(10)})  # 0 re-runs of the 5 finished calls
    assert ledger[:5] == before
    # the 11 model requests were each sent once: request 5 (recorded before the kill) was replayed
    assert Counter(worker.lines(worker.requests)) == Counter({str(i): 1 for i in range(11)})


def test_idempotent_call_in_flight_is_rerun_with_the_same_key(tmp_path: Path) -> None:
    hang = tmp_path / "hang-once"
    hang.touch()
    worker = Worker(tmp_path, CALLS="4", TOOL="step", HANG_AT="2", HANG_ONCE=str(hang))
    proc = worker.start("run", "crash-2")
    worker.kill_after(proc, ledger_lines=3, settle=0.1)  # call 2 did its effect, its result unrecorded

    result = worker.recover("crash-2")

    assert result["status"] == "completed"
    ledger = [line.split() for line in worker.lines(worker.ledger)]
    assert [entry[1] for entry in ledger] == ["0", "1", "2", "2", "3"]
    assert ledger[2][2] == ledger[3][2] == "crash-2:tool:6/call-2"  # same idempotency key on the re-run


def test_non_idempotent_call_in_flight_is_not_rerun(tmp_path: Path) -> None:
    hang = tmp_path / "hang-once"
    hang.touch()
    worker = Worker(tmp_path, CALLS="4", TOOL="charge", HANG_AT="2", HANG_ONCE=str(hang))
    proc = worker.start("run", "crash-3")
    worker.kill_after(proc, ledger_lines=3, settle=0.1)

    result = worker.recover("crash-3")

    assert result["status"] == "failed"
    assert result["error_type"] == "DBOSNonIdempotentReplayError"
    error = result["error"]
    assert "'crash-3'" in error and "'charge'" in error and "'call-2'" in error
    assert "DBOS.fork_workflow('crash-3', start_step=" in error
    assert [line.split()[1] for line in worker.lines(worker.ledger)] == ["0", "1", "2"]  # charged once


def test_a_queued_run_is_taken_by_a_worker_process_and_survives_its_sigkill(tmp_path: Path) -> None:
    """`PERDURE_DBOS_QUEUE`: the client only enqueues; `perdure worker --engine dbos` runs the run.

    The first worker is SIGKILLed mid-run; a second worker recovers the run; the client, which never
    launched DBOS, gets the result. Every tool call and model request ran once.
    """
    worker = Worker(
        tmp_path, CALLS="6", TOOL_SLEEP="0.1", QUEUE="perdure-test", PERDURE_DBOS_QUEUE="perdure-test"
    )
    command = [
        sys.executable,
        "-m",
        "perdure.cli",
        "worker",
        "--app",
        "dbos_app:agent",
        "--dbos-url",
        worker.url,
    ]

    def serve() -> subprocess.Popen[str]:
        return subprocess.Popen(
            command, env=worker.env, cwd=APP.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    early = worker.start("enqueue", "queued-0")  # before any worker created DBOS's tables: a clear error
    _, early_err = early.communicate(timeout=60)
    assert (
        early.returncode != 0 and "is not ready" in early_err and "perdure worker --engine dbos" in early_err
    )

    first = serve()
    database = tmp_path / "dbos.sqlite"
    deadline = time.monotonic() + 30
    while True:  # the worker's launch created the tables (and registers the queue right after)
        try:
            with sqlite3.connect(database) as conn:
                conn.execute("SELECT 1 FROM workflow_status LIMIT 1").fetchall()
            break
        except sqlite3.Error:
            assert time.monotonic() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.05)
    client = worker.start("enqueue", "queued-1")
    try:
        worker.kill_after(first, ledger_lines=3, settle=0.05)
        second = serve()
        try:
            out, err = client.communicate(timeout=90)
            assert client.returncode == 0, err[-3000:]
            result = json.loads(out.strip().splitlines()[-1])
        finally:
            second.send_signal(signal.SIGTERM)
            second.communicate(timeout=30)
    finally:
        for proc in (first, client):
            if proc.poll() is None:
                proc.kill()
    assert result["status"] == "completed" and result["output"] == "finished 6 calls"
    assert result["launched_here"] is False  # the client ran nothing itself
    calls = Counter(line.rsplit(" ", 1)[0] for line in worker.lines(worker.ledger))
    # steps 0 and 1 were recorded before step 2 even started: never again; step 2 wrote its ledger
    # line just before the kill and may not have been recorded (idempotent: once more at most);
    # steps 3-5 had not written anything: once each
    assert [calls[f"step {i}"] for i in (0, 1, 3, 4, 5)] == [1, 1, 1, 1, 1], calls
    assert calls["step 2"] in (1, 2) and len(calls) == 6, calls
    requests = Counter(worker.lines(worker.requests))
    assert [requests[str(i)] for i in range(3)] == [1, 1, 1], requests  # answered before the kill
    assert set(requests) == {str(i) for i in range(7)} and max(requests.values()) <= 2, requests
