"""The action commands: typer's runner for each command, real processes for the exit codes, on 3 backends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from perdure.cli import app
from perdure.records import ExecutionStatus
from perdure.storage import storage_from_url
from support import actions_app
from support.paths import SRC, TESTS
from support.storages import backend_url

runner = CliRunner()
APP = ["--app", "support.actions_app:agents"]


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ACTIONS_LEDGER", str(tmp_path / "ledger"))
    return backend_url(request.param, tmp_path, request)


def _setup(url: str, *starts: tuple[str, str]) -> None:
    async def go() -> None:
        storage = storage_from_url(url)
        try:
            for kind, execution_id in starts:
                if kind == "interrupted":
                    await actions_app.interrupt_slow(storage, execution_id)
                    continue
                with contextlib.suppress(ConnectionError):  # a payment interrupted mid-effect
                    await actions_app.start(storage, kind, execution_id)
        finally:
            await storage.close_async()

    asyncio.run(go())


def _status(url: str, execution_id: str) -> ExecutionStatus | None:
    storage = storage_from_url(url)
    try:
        head = storage.load_state(execution_id)
        return None if head is None else head.status
    finally:
        storage.close()


def test_approve_deny_resume_through_the_cli(url: str) -> None:
    _setup(url, ("approvals", "a1"))
    approved = runner.invoke(
        app, ["approve", "a1", "call-0-0", "-s", url, "--args", '{"amount": 5, "to": "bob"}']
    )
    assert approved.exit_code == 0, approved.output
    assert "still waiting for call-0-1" in approved.stdout
    denied = runner.invoke(app, ["deny", "a1", "call-0-1", "-s", url, "--message", "no", "--json"])
    assert denied.exit_code == 0, denied.output
    assert json.loads(denied.stdout)["ready"] is True
    again = runner.invoke(app, ["approve", "a1", "call-0-1", "-s", url])
    assert again.exit_code == 4 and again.stderr.startswith("error: ")
    resumed = runner.invoke(app, ["resume", "a1", "-s", url, *APP, "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["output"] == "done: transfer=sent 5 to bob; close=no"
    assert runner.invoke(app, ["resume", "a1", "-s", url, *APP]).exit_code == 4  # completed


def test_resolve_cancel_fork_delete_retry_recover(url: str) -> None:
    actions_app.FAIL_PAY.extend([1, 1])
    _setup(url, ("payments", "p1"), ("payments", "p2"), ("interrupted", "i1"), ("interrupted", "i2"))
    bad = runner.invoke(app, ["resolve", "p1", "call-1-0", "maybe", "-s", url])
    assert bad.exit_code == 2
    done = runner.invoke(app, ["resolve", "p1", "call-1-0", "done", "--result", '"paid by hand"', "-s", url])
    assert done.exit_code == 0, done.output
    aborted = runner.invoke(app, ["resolve", "p2", "call-1-0", "abort", "-s", url])
    assert aborted.exit_code == 0 and _status(url, "p2") is ExecutionStatus.CANCELLED
    cancelled = runner.invoke(app, ["cancel", "i1", "-s", url, "--reason", "test"])
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    past_the_end = runner.invoke(app, ["fork", "i2", "--at-step", "999", "-s", url])
    assert past_the_end.exit_code == 3, past_the_end.output  # no such checkpoint: not found, like an id
    forked = runner.invoke(app, ["fork", "i2", "--at-step", "0", "-s", url, "--json"])
    assert forked.exit_code == 0, forked.output
    child = json.loads(forked.stdout)["execution_id"]
    recovered = runner.invoke(app, ["recover", "-s", url, *APP])
    assert recovered.exit_code == 0, recovered.output
    assert recovered.stdout.startswith("recovered 3"), recovered.stdout  # i2, p1, the fork; not i1
    assert _status(url, "i1") is ExecutionStatus.CANCELLED and _status(url, "p1") is ExecutionStatus.COMPLETED
    assert _status(url, child) is ExecutionStatus.COMPLETED
    retried = runner.invoke(app, ["retry-failed", "-s", url, *APP])
    assert retried.exit_code == 0 and retried.stdout.startswith("recovered 0"), retried.output
    deleted = runner.invoke(app, ["delete", "i1", "-s", url])
    assert deleted.exit_code == 0 and _status(url, "i1") is None
    assert runner.invoke(app, ["delete", "i1", "-s", url]).exit_code == 3


def _perdure(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    return subprocess.run(
        [sys.executable, "-m", "perdure.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TESTS,
    )


def test_exit_codes_in_real_processes(url: str) -> None:
    _setup(url, ("approvals", "x1"), ("interrupted", "x2"))
    missing = _perdure("cancel", "nope", "-s", url)
    assert missing.returncode == 3 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert _perdure("approve", "x1", "call-0-0", "-s", url, "--args", "[1]").returncode == 2
    assert _perdure("approve", "x2", "c", "-s", url).returncode == 4  # not paused
    assert _perdure("resume", "x1", "-s", url, *APP).returncode == 4  # waits for decisions
    storage = storage_from_url(url)
    storage.acquire_lease("x2", "host-elsewhere:1:abc", 60)
    storage.close()
    leased = _perdure("delete", "x2", "-s", url)
    assert leased.returncode == 4 and "leased" in leased.stderr, leased.stderr
    assert _perdure("delete", "x2", "-s", url, "--force").returncode == 0
    ok = _perdure("approve", "x1", "call-0-0", "-s", url)
    assert ok.returncode == 0, ok.stderr
