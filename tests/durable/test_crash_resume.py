"""Crash tests: real subprocesses SIGKILL themselves mid-run, a new process resumes.

The kill points are perdure's named fault points (`PERDURE_FAULT`, see `perdure._faults`).

Each scenario counts, from the side-effect ledger, the model requests and tool executions of the
crashed process and of the resuming process, and checks them against an uninterrupted run:
- every unit journaled before the crash ran exactly once in total;
- the resuming process made exactly the model requests that were not journaled;
- the final output equals the uninterrupted run's output.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from perdure.durable import DurableExecution
from perdure.storage import storage_from_url
from support.paths import SRC, TESTS
from support.storages import backend_url

pytestmark = pytest.mark.crash

TOOLS = ["fetch_data", "validate_data", "transform_data", "store_results"]


def _run(
    mode: str, url: str, execution_id: str, ledger: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC)]),
        "LEDGER": str(ledger),
        "PHASE": mode,
        **env,
    }
    # Imported as a module (not __main__) so tools are recorded and re-imported by their real path.
    code = (
        "import sys; from support import crash_app; "
        f"sys.exit(crash_app.main(['crash_app', {mode!r}, {url!r}, {execution_id!r}]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120, check=False
    )


def _events(ledger: Path, phase: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            who, _, event = line.partition(" ")
            if who == phase:
                counts[event.rsplit(" ", 1)[0] if event.startswith("model") else event] += 1
    return counts


@pytest.fixture(params=["sqlite", "file", "redis", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request.param, tmp_path, request)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run per calls-per-response setting: output and request count."""
    results = {}
    for cpr in ("1", "2"):
        tmp = tmp_path_factory.mktemp(f"baseline{cpr}")
        ledger = tmp / "ledger"
        proc = _run("start", f"sqlite:///{tmp / 'b.db'}", "baseline-1", ledger, CALLS_PER_RESPONSE=cpr)
        assert proc.returncode == 0, proc.stderr
        events = _events(ledger, "start")
        assert all(events[f"tool {t}"] == 1 for t in TOOLS), events
        results[cpr] = {
            "output": json.loads(proc.stdout.splitlines()[-1])["output"],
            "requests": events["model"],
        }
    return results


def _journaled(url: str, execution_id: str) -> tuple[int, set[str]]:
    steps = storage_from_url(url).load_steps(execution_id)
    models = sum(1 for s in steps if s.kind == "model_request")
    tools = {s.name.removeprefix("tool:") for s in steps if s.kind == "tool_call"}
    return models, tools


@pytest.mark.parametrize(
    ("fault", "cpr", "rerun_tool"),
    [
        ("inside_model_request:1", "1", None),  # killed during the very first model request
        ("inside_model_request:3", "1", None),  # killed during a model request mid-run
        ("after_tool_side_effect@transform_data", "1", "transform_data"),  # effect done, journal not
        ("before_tool_call@validate_data", "2", None),  # between two tool calls of one model response
        (
            "after_tool_side_effect@store_results",
            "2",
            "store_results",
        ),  # 2nd call of a response, after effect
    ],
)
def test_sigkill_then_resume_in_new_process(
    url: str, tmp_path: Path, baseline: dict[str, Any], fault: str, cpr: str, rerun_tool: str | None
) -> None:
    execution_id = "crash-" + re.sub(r"[^A-Za-z0-9_]+", "-", fault)
    ledger = tmp_path / "ledger"
    crashed = _run("start", url, execution_id, ledger, PERDURE_FAULT=fault, CALLS_PER_RESPONSE=cpr)
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)

    # What the crashed process left: an in-progress checkpoint with its journal.
    info = DurableExecution.get_execution_info(execution_id, storage_from_url(url))
    assert info is not None and info["status"] == "success"
    journaled_models, journaled_tools = _journaled(url, execution_id)
    first = _events(ledger, "start")

    resumed = _run("resume", url, execution_id, ledger, CALLS_PER_RESPONSE=cpr)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout.splitlines()[-1])
    second = _events(ledger, "resume")

    # Same output as an uninterrupted run.
    assert result["status"] == "completed"
    assert result["output"] == baseline[cpr]["output"]
    # Model requests made on resume = requests not journaled before the crash.
    assert second["model"] == baseline[cpr]["requests"] - journaled_models
    assert result["replay"]["replayed_model_requests"] == journaled_models
    assert result["replay"]["executed_model_requests"] == second["model"]
    # Every tool ran exactly once in total, except the documented at-least-once window.
    for name in TOOLS:
        total = first[f"tool {name}"] + second[f"tool {name}"]
        if name in journaled_tools:
            assert second[f"tool {name}"] == 0, f"{name} was journaled but ran again"
        assert total == (2 if name == rerun_tool else 1), (name, first, second)
    assert result["replay"]["replayed_tool_calls"] == len(journaled_tools)


def test_external_sigkill_at_random_moment_resumes(tmp_path: Path, baseline: dict[str, Any]) -> None:
    """The parent kills a slow run from outside after it journaled some steps."""
    url = f"sqlite:///{tmp_path / 'ext.db'}"
    ledger = tmp_path / "ledger"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC)]), "LEDGER": str(ledger)}
    env.update(PHASE="start", SLOW_TOOLS="0.3")
    code = (
        "import sys; from support import crash_app; "
        f"sys.exit(crash_app.main(['crash_app', 'start', {url!r}, 'ext-1']))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        # Wait until two tools executed, then kill -9 from outside, wherever the child is.
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(v for k, v in _events(ledger, "start").items() if k.startswith("tool")) >= 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    journaled_models, journaled_tools = _journaled(url, "ext-1")
    first = _events(ledger, "start")
    resumed = _run("resume", url, "ext-1", ledger)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout.splitlines()[-1])
    second = _events(ledger, "resume")
    assert result["output"] == baseline["1"]["output"]
    assert second["model"] == baseline["1"]["requests"] - journaled_models
    for name in TOOLS:
        if name in journaled_tools:
            assert second[f"tool {name}"] == 0
        # at most one extra run, and only for a tool whose effect was not journaled
        assert 1 <= first[f"tool {name}"] + second[f"tool {name}"] <= (1 if name in journaled_tools else 2)


def test_exception_in_one_process_resume_in_another(
    url: str, tmp_path: Path, baseline: dict[str, Any]
) -> None:
    ledger = tmp_path / "ledger"
    failed = _run(
        "start", url, "exc-1", ledger, PERDURE_FAULT="before_tool_call@transform_data:raise:ConnectionError"
    )
    assert failed.returncode == 1 and "fault injected at before_tool_call@transform_data" in failed.stderr
    info = DurableExecution.get_execution_info("exc-1", storage_from_url(url))
    assert info is not None
    assert info["status"] == "failed" and info["step_name"] == "tool:transform_data"
    assert info["error_details"]["type"] == "ConnectionError"
    resumed = _run("resume", url, "exc-1", ledger)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout.splitlines()[-1])
    assert result["output"] == baseline["1"]["output"]
    first, second = _events(ledger, "start"), _events(ledger, "resume")
    for name in TOOLS:
        assert first[f"tool {name}"] + second[f"tool {name}"] == 1, name
    assert first["model"] + second["model"] == baseline["1"]["requests"]
