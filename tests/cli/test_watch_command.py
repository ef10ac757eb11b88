"""`perdure watch`: real processes: a worker writes, `perdure watch` prints, exit codes hold."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perdure.events import EVENT_ADAPTER
from support.paths import SRC, TESTS

ENV = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}"}


def _perdure(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "perdure.cli", *args],
        env=ENV,
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


def _app(url: str, execution_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "support.watch_app", url, execution_id, "2", "0.05", *extra],
        env=ENV,
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'w.db'}"


def test_watch_one_execution_from_start_prints_its_history_and_exits_0(url: str) -> None:
    assert _app(url, "run-fails", "fail").returncode == 1
    proc = _perdure("watch", "--storage", url, "run-fails", "--from-start")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert "run-fails  execution_started" in lines[0]
    assert sum("unit_completed  tool:work" in line for line in lines) == 1
    assert "execution_failed  tool:work  RuntimeError: work 2 broke" in lines[-1]
    assert all(len(line) <= 100 for line in lines)

    as_json = _perdure("watch", "--storage", url, "run-fails", "--from-start", "--json")
    out, _ = as_json.communicate(timeout=60)
    events = [EVENT_ADAPTER.validate_json(line) for line in out.splitlines()]
    assert events[0].kind == "execution_started" and events[-1].kind == "execution_failed"


def test_watch_unknown_execution_exits_3(url: str) -> None:
    assert _app(url, "run-ok").returncode == 0
    proc = _perdure("watch", "--storage", url, "nope")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert err.startswith("error: Execution 'nope' was not found") and err.count("\n") == 1


def test_watch_all_prints_live_events_of_another_process_until_sigint(url: str) -> None:
    assert _app(url, "before").returncode == 0  # the store exists; its history is not printed
    watcher = _perdure("watch", "--storage", url)
    time.sleep(1.5)  # the watcher has read its baseline
    assert _app(url, "live-run").returncode == 0
    time.sleep(1.0)
    watcher.send_signal(signal.SIGINT)
    out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    assert "before" not in out
    live = [line for line in out.splitlines() if "live-run" in line]
    assert "execution_started" in live[0] and "execution_completed" in live[-1]
    assert sum("unit_completed" in line for line in live) == 5  # 3 model requests, 2 tool calls
