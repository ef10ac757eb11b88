"""Real `perdure worker` processes and the side-effect ledgers of `support.worker_app`.

Shared by the worker, recovery, race, shutdown and delete-while-running tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perdure.storage import DurableExecutionStorage
from support import worker_app
from support.paths import SRC, TESTS

CRASH_POINTS = ["reserve", "charge", "notify"]


def ledger_lines(directory: Path) -> list[tuple[str, str, str]]:
    """`(kind, idempotency key, pid)` of every unit that ran live, from all processes' ledgers."""
    lines = []
    for path in sorted(directory.glob("ledger-*")):
        for line in path.read_text().splitlines():
            kind, key, pid = line.split(" ")
            lines.append((kind, key, pid))
    return lines


def interrupt_many(storage: DurableExecutionStorage, count: int, *, at: str | None = None) -> list[str]:
    """`count` interrupted executions; every fourth one ran through the perdure `Agent` facade, the
    others through the plain pydantic-ai agent (cheaper: the facade builds its agent on every call)."""
    ids = [f"w-{i:04d}" for i in range(count)]

    async def create() -> None:
        for i, execution_id in enumerate(ids):
            point = at or CRASH_POINTS[i % len(CRASH_POINTS)]
            await worker_app.interrupt(storage, execution_id, point, facade=i % 4 == 0)

    asyncio.run(create())
    return ids


def start_worker(url: str, ledger: Path, *args: str, slow: float = 0.0) -> subprocess.Popen[str]:
    """A `perdure worker` process serving `support.worker_app:resolve`, run from the tests directory.

    Only `src` is on PYTHONPATH: the app module is found because the worker puts its current
    directory on `sys.path`, as uvicorn does.
    """
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "WORKER_LEDGER_DIR": str(ledger),
        "SLOW_TOOLS": str(slow),
    }
    command = [
        sys.executable,
        "-m",
        "perdure.cli",
        "worker",
        "--storage",
        url,
        "--app",
        "support.worker_app:resolve",
    ]
    return subprocess.Popen(
        [*command, *args], env=env, cwd=TESTS, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stop(
    proc: subprocess.Popen[str], sig: int | None = signal.SIGTERM, timeout: float = 60
) -> tuple[int, str]:
    """Send `sig` (None: just wait), then wait for the process and return its exit code and stderr."""
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"worker did not stop within {timeout}s: {err[-3000:]}")
    return proc.returncode, err


def wait_until(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")
