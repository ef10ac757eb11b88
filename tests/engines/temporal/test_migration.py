"""The worked migration of docs/engines.md: one agent module, SQLite first, then Temporal, by configuration.

`examples/engines/app.py` and `run.py` are run exactly as the page shows, in subprocesses: first on the
embedded engine with `PERDURE_STORAGE_URL=sqlite:///...`, then with `PERDURE_ENGINE=temporal` and a
`perdure worker` process. No file changes between the two.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

from support.paths import ROOT
from support.temporal_server import temporal_address  # noqa: F401 - session fixture

EXAMPLE = ROOT / "examples" / "engines"
ANSWER = "done: refunded 120 on order 42"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERDURE_")}
    env.update(LEDGER=str(tmp_path / "ledger.txt"), PYTHONPATH=str(ROOT / "src"), **extra)
    return env


def _run(env: dict[str, str], execution_id: str) -> str:
    proc = subprocess.run(
        [sys.executable, "run.py", execution_id],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


def test_the_same_agent_moves_from_sqlite_to_temporal_by_configuration(
    tmp_path: Path,
    temporal_address: str,  # noqa: F811 - the session fixture imported above
) -> None:
    ledger = tmp_path / "ledger.txt"
    database = tmp_path / "executions.db"

    # 1. embedded SQLite, the default engine
    sqlite_env = _env(tmp_path, PERDURE_STORAGE_URL=f"sqlite:///{database}")
    assert _run(sqlite_env, "refund-1") == ANSWER
    assert ledger.read_text().splitlines() == ["find_order 42", "refund 42 120"]
    with sqlite3.connect(database) as conn:
        row = conn.execute("SELECT status FROM durable_executions WHERE execution_id = 'refund-1'").fetchone()
    assert row == ("completed",)

    # 2. Temporal: only the environment changes
    queue = f"migration-{uuid.uuid4().hex[:8]}"
    temporal_env = _env(
        tmp_path,
        PERDURE_ENGINE="temporal",
        PERDURE_TEMPORAL_ADDRESS=temporal_address,
        PERDURE_TEMPORAL_TASK_QUEUE=queue,
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "perdure.cli", "worker", "--app", "app:agent"],
        cwd=EXAMPLE,
        env=temporal_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert _run(temporal_env, "refund-2") == ANSWER
        assert ledger.read_text().splitlines()[2:] == ["find_order 42", "refund 42 120"]
        assert _run(temporal_env, "refund-2") == ANSWER  # the closed workflow's result; nothing re-runs
        assert len(ledger.read_text().splitlines()) == 4
        shown = subprocess.run(
            [sys.executable, "-m", "perdure.cli", "show", "refund-2", "--json"],
            cwd=EXAMPLE,
            env=temporal_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert '"status": "completed"' in shown.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            out, _ = worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
    deadline = time.monotonic() + 1
    while worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.returncode == 0, out
