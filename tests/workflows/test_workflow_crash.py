"""Workflow crash tests: a real subprocess SIGKILLs itself mid-workflow, a new process resumes it.

The workflow (`support.workflow_app`) runs three agents (planner, executor, reviewer), the sync step
`archive` between the second and the third, and a durable `sleep` between the step and the third
agent. Every model request, tool body and step body appends one event to a ledger, so the test
knows exactly what ran in the crashed process and what ran in the resuming one.

For each crash point (inside the second agent, inside the step, during the sleep) and every
persistent backend it checks against an uninterrupted run:
- the crashed process ran the uninterrupted run's units up to the crash point, in order;
- the journal holds exactly the units that finished before the crash;
- the resuming process ran exactly the units that were not journaled (the one in flight again,
  if its result was lost), so every journaled unit ran exactly once in total;
- the output equals the uninterrupted run's output;
- a crash during the sleep keeps the journaled wake-up time: the resume waits only what is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from perdure.durable import DurableExecution
from perdure.records import StepKind, StepRecord
from perdure.storage import storage_from_url
from support.paths import SRC, TESTS
from support.storages import backend_url

pytestmark = pytest.mark.crash

SHORT_SLEEP = "0.2"
"""The workflow's sleep in the cases that do not crash during it (keeps them fast)."""
LONG_SLEEP = 3.0
"""The workflow's sleep when the crash is during the sleep."""
RESUME_BEFORE_WAKE = 1.5
"""The crash-during-sleep case resumes this many seconds before the journaled wake-up time."""


def _run(
    mode: str, url: str, execution_id: str, ledger: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **{k: v for k, v in os.environ.items() if k != "PERDURE_FAULT"},
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC)]),
        "LEDGER": str(ledger),
        "PHASE": mode,
        "SLEEP_SECONDS": SHORT_SLEEP,
        **env,
    }
    # Imported as a module (not __main__), so the workflow registers under its real module path.
    code = (
        "import sys; from support import workflow_app; "
        f"sys.exit(workflow_app.main(['workflow_app', {mode!r}, {url!r}, {execution_id!r}]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120, check=False
    )


def _result(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def _events(ledger: Path, phase: str) -> list[str]:
    """The ledger's events of one process, in the order they happened."""
    if not ledger.exists():
        return []
    lines = (line.partition(" ") for line in ledger.read_text().splitlines())
    return [event for who, _, event in lines if who == phase]


def _journal(url: str, execution_id: str) -> list[StepRecord]:
    storage = storage_from_url(url)
    try:
        return storage.load_steps(execution_id)
    finally:
        storage.close()


def _info(url: str, execution_id: str) -> dict[str, Any]:
    storage = storage_from_url(url)
    try:
        info: dict[str, Any] | None = DurableExecution.get_execution_info(execution_id, storage)
    finally:
        storage.close()
    assert info is not None
    return info


def _journaled_events(steps: list[StepRecord]) -> list[str]:
    """The journal's units as ledger events (`model <agent> <n>`, `tool <name>`, `step <name>`)."""
    agents = {s.key: s.name.removeprefix("agent:") for s in steps if s.kind == StepKind.AGENT}
    events = []
    for s in steps:
        if s.kind == StepKind.MODEL_REQUEST:
            position, _, n = s.key.partition("/model#")
            events.append(f"model {agents[position]} {n}")
        elif s.kind == StepKind.TOOL_CALL:
            events.append(f"tool {s.name.removeprefix('tool:')}")
        elif s.kind == StepKind.STEP and s.name.startswith("step:"):
            events.append(f"step {s.name.removeprefix('step:')}")
    return events


def _wake_times(steps: list[StepRecord]) -> list[datetime]:
    return [datetime.fromisoformat(s.result) for s in steps if s.kind == StepKind.STEP and s.name == "sleep"]


@pytest.fixture(params=["sqlite", "file", "redis", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request.param, tmp_path, request)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run (sqlite): its output and its ledger events in order."""
    tmp = tmp_path_factory.mktemp("workflow-baseline")
    ledger = tmp / "ledger"
    result = _result(_run("start", f"sqlite:///{tmp / 'b.db'}", "baseline-1", ledger))
    events = _events(ledger, "start")
    assert result["status"] == "completed"
    # The shape the crash cases rely on: 3 agents x (3 requests + 2 tools), one step, all distinct.
    assert sum(e.startswith("model ") for e in events) == 9
    assert sum(e.startswith("tool ") for e in events) == 6
    assert events.count("step archive") == 1
    assert len(set(events)) == len(events), events
    assert events.index("step archive") == 10  # planner and executor before it, reviewer after it
    return {"output": result["output"], "events": events}


@dataclass(frozen=True)
class Crash:
    fault: str
    """The `PERDURE_FAULT` the first process dies of."""
    where: str
    """Where the fault announces it fired (`point@target` on stderr)."""
    last_event: str
    """The last ledger event of the crashed process."""
    lost: bool
    """Whether that last unit's result was lost (not journaled): then the resume runs it again."""
    sleep: float = float(SHORT_SLEEP)


CRASHES = [
    # Inside the second agent: its first model request answered (the 4th of the process), not journaled.
    pytest.param(
        Crash("inside_model_request:4", "inside_model_request", "model executor 1", lost=True),
        id="agent2-model-request",
    ),
    # Inside the second agent: its first tool's body returned, its result not journaled.
    pytest.param(
        Crash("after_tool_call@run_analysis", "after_tool_call@run_analysis", "tool run_analysis", lost=True),
        id="agent2-tool-call",
    ),
    # Inside the step: its body returned (side effect done), its result not journaled.
    pytest.param(Crash("after_step@archive", "after_step@archive", "step archive", lost=True), id="step"),
    # During the sleep: the wake-up time is journaled, the process is waiting.
    pytest.param(
        Crash("before_sleep_wait", "before_sleep_wait", "step archive", lost=False, sleep=LONG_SLEEP),
        id="sleep",
    ),
]


@pytest.mark.parametrize("crash", CRASHES)
def test_sigkill_then_resume_in_new_process(
    url: str, tmp_path: Path, baseline: dict[str, Any], crash: Crash
) -> None:
    expected: list[str] = baseline["events"]
    execution_id = "wf-crash-1"
    ledger = tmp_path / "ledger"
    sleep_env = {"SLEEP_SECONDS": str(crash.sleep)}

    crashed = _run("start", url, execution_id, ledger, PERDURE_FAULT=crash.fault, **sleep_env)
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
    assert f"perdure._faults: kill at {crash.where} (" in crashed.stderr, crashed.stderr

    # The crashed process ran the uninterrupted run's units up to the crash point, in order.
    first = _events(ledger, "start")
    cut = expected.index(crash.last_event) + 1
    assert first == expected[:cut]
    # The journal holds the units that finished before the crash: all but the one in flight.
    journaled = cut - 1 if crash.lost else cut
    steps = _journal(url, execution_id)
    assert _journaled_events(steps) == expected[:journaled]
    info = _info(url, execution_id)
    assert info["status"] not in ("completed", "failed"), info["status"]
    assert info["task"]["workflow"] == "crash_pipeline"

    wake: datetime | None = None
    if crash.fault == "before_sleep_wait":
        [wake] = _wake_times(steps)
        assert info["wake_at"] is not None and datetime.fromisoformat(info["wake_at"]) == wake
        # Resume some time into the sleep: it must wait only for what is left of it.
        time.sleep(max(0.0, wake.timestamp() - RESUME_BEFORE_WAKE - time.time()))

    # A new process resumes by execution id alone (the workflow is found by its recorded name).
    result = _result(_run("resume", url, execution_id, ledger, **sleep_env))
    second = _events(ledger, "resume")

    # Same output as an uninterrupted run.
    assert result["status"] == "completed"
    assert result["output"] == baseline["output"]
    # The resume ran exactly the units that were not journaled, in order: nothing finished ran again.
    assert second == expected[journaled:]
    totals = Counter(first) + Counter(second)
    for event in expected:
        rerun = crash.lost and event == crash.last_event
        assert totals[event] == (2 if rerun else 1), (event, first, second)
    # The engine's own accounting agrees with the ledger.
    journaled_models = sum(e.startswith("model ") for e in expected[:journaled])
    journaled_tools = sum(e.startswith("tool ") for e in expected[:journaled])
    assert result["replay"]["resumes"] == 1
    assert result["replay"]["replayed_model_requests"] == journaled_models
    assert result["replay"]["replayed_tool_calls"] == journaled_tools
    assert result["replay"]["executed_model_requests"] == sum(e.startswith("model ") for e in second)
    assert result["replay"]["executed_tool_calls"] == sum(e.startswith("tool ") for e in second)
    # The final journal is the uninterrupted run's units, each once.
    final = _journal(url, execution_id)
    assert _journaled_events(final) == expected
    assert len(_wake_times(final)) == 1

    if wake is not None:
        # The journaled wake-up time is kept, and the resume waited only for the remainder: with the
        # sleep restarted from zero it would have waited the full LONG_SLEEP.
        assert _wake_times(final) == [wake]
        assert result["slept"] < LONG_SLEEP - 1.0, result["slept"]
        assert result["finished_at"] >= wake.timestamp() - 0.05  # and it did not wake up early
