"""`perdure._faults`: the `PERDURE_FAULT` vocabulary, counting, every action, the disabled cost, and
that every registered fault point is reached by a real run (and by nothing unregistered).

The crash tests (`test_crash_resume.py`, `test_provider_faults.py`, `test_facade_decisions.py`,
`test_recovery.py`, `test_crash_fuzz.py`, ...) arm these points to kill real subprocesses; here each
action is checked once, kills in a subprocess.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import time
import timeit
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import perdure
from perdure import _faults
from perdure.durable import DurableExecution, PerdureDurability
from perdure.records import ExecutionStatus, StepKind
from perdure.storage import FileDurableStorage, SQLiteDurableStorage, storage_from_url
from support.paths import ROOT, SRC


@pytest.fixture(autouse=True)
def _nothing_armed() -> Iterator[None]:
    _faults.disarm()
    yield
    _faults.disarm()


def _python(code: str, fault: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), _faults.ENV_VAR: fault}
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


# ---- the vocabulary ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("before_commit", ["before_commit:1:kill"]),
        ("before_commit:3", ["before_commit:3:kill"]),
        ("before_commit:raise", ["before_commit:1:raise"]),
        ("before_commit:2:raise:OSError", ["before_commit:2:raise:OSError"]),
        (
            "before_commit:raise:concurrent.futures.TimeoutError",
            ["before_commit:1:raise:concurrent.futures.TimeoutError"],
        ),
        ("lease_renew:sleep:0.5", ["lease_renew:1:sleep:0.5"]),
        ("before_commit:exit", ["before_commit:1:exit"]),
        ("before_commit:4:exit:3", ["before_commit:4:exit:3"]),
        ("before_journal_line:2:torn", ["before_journal_line:2:torn"]),
        ("after_tool_side_effect@charge", ["after_tool_side_effect@charge:1:kill"]),
        ("before_tool_call@b|a:2", ["before_tool_call@a|b:2:kill"]),
        (
            " after_journal_write@attempt:2 , before_head_replace:kill,",
            ["after_journal_write@attempt:2:kill", "before_head_replace:1:kill"],
        ),
        ("", []),
    ],
)
def test_valid_specs_parse(spec: str, expected: list[str]) -> None:
    assert [fault.spec for fault in _faults.parse(spec)] == expected
    assert _faults.active() == ()  # parsing arms nothing


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("before_jornal_write", "unknown fault point 'before_jornal_write'"),
        ("before_commit:0", "nth must be 1 or more"),
        ("before_commit:-2:kill", "nth must be 1 or more"),
        ("before_commit:explode", "unknown action 'explode'"),
        ("before_commit:2:", "empty action"),
        ("before_commit:kill:9", "'kill' takes no argument"),
        ("before_commit:sleep", "'sleep' needs seconds"),
        ("before_commit:sleep:soon", "'sleep' needs seconds"),
        ("before_commit:sleep:-1", "'sleep' needs seconds"),
        ("before_commit:exit:x", "exit code must be an integer"),
        ("before_commit:exit:256", "exit code must be 0-255"),
        ("before_commit:torn", "'torn' only applies to before_journal_line"),
        ("before_commit:raise:NoSuchError", "'NoSuchError' is not an exception class"),
        ("before_commit:raise:len", "'len' is not an exception class"),
        ("before_commit:raise:no_such_module.Error", "cannot import exception"),
        ("before_commit:raise:perdure.errors.LeaseLostError", "cannot be built from one message argument"),
        ("before_commit:1:sleep:1:2", "too many ':' fields"),
        ("before_tool_call@:kill", "empty target"),
        (",", "no fault in it"),
    ],
)
def test_invalid_specs_are_refused(spec: str, message: str) -> None:
    with pytest.raises(_faults.FaultSpecError, match=re.escape(message)):
        _faults.parse(spec)
    with pytest.raises(_faults.FaultSpecError):
        _faults.arm_spec(spec)
    assert _faults.active() == ()


def test_the_api_refuses_what_the_environment_refuses() -> None:
    with pytest.raises(_faults.FaultSpecError, match="unknown fault point"):
        _faults.arm("no_such_point", action="raise")
    with pytest.raises(_faults.FaultSpecError, match="nth must be 1 or more"):
        _faults.arm("before_commit", action="raise", nth=0)
    with pytest.raises(_faults.FaultSpecError, match="'sleep' needs seconds"):
        _faults.arm("before_commit", action="sleep")
    assert _faults.arm("before_commit", action="sleep", arg=0.25).spec == "before_commit:1:sleep:0.25"
    assert _faults.arm("before_commit", action="raise:OSError").spec == "before_commit:1:raise:OSError"


def test_the_environment_is_read_at_import_and_refused_loudly() -> None:
    code = "from perdure import _faults; print([f.spec for f in _faults.active()])"
    ok = _python(code, "before_commit:2:raise,lease_renew@x:sleep:1")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "['before_commit:2:raise', 'lease_renew@x:1:sleep:1']"
    bad = _python("import perdure", "before_comit")
    assert bad.returncode == 1 and "FaultSpecError" in bad.stderr and "before_comit" in bad.stderr


def test_load_env_rereads_and_replaces_only_the_environments_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    own = _faults.arm("before_commit", action="raise")
    monkeypatch.setenv(_faults.ENV_VAR, "lease_renew:2:raise")
    first = _faults.load_env()
    assert [f.spec for f in _faults.active()] == ["before_commit:1:raise", "lease_renew:2:raise"]
    monkeypatch.setenv(_faults.ENV_VAR, "before_head_replace")
    _faults.load_env()
    assert [f.spec for f in _faults.active()] == ["before_commit:1:raise", "before_head_replace:1:kill"]
    assert first[0] not in _faults.active() and own in _faults.active()
    monkeypatch.delenv(_faults.ENV_VAR)
    assert _faults.load_env() == [] and _faults.active() == (own,)


# ---- counting ------------------------------------------------------------------------------------


def test_the_nth_hit_fires_once_and_hits_keep_counting() -> None:
    with _faults.armed("before_journal_write", nth=3, action="raise") as fault:
        _faults.point("before_journal_write")
        _faults.point("after_journal_write")  # another point: not counted
        _faults.point("before_journal_write", StepKind.TOOL_CALL)
        assert (fault.hits, fault.fired) == (2, False)
        with pytest.raises(_faults.FaultInjected, match=r"before_journal_write@model_request \(hit 3\)"):
            _faults.point("before_journal_write", StepKind.MODEL_REQUEST)
        _faults.point("before_journal_write")  # fired already: passes
        assert (fault.hits, fault.fired) == (4, True)
    assert _faults.active() == ()


def test_targets_filter_the_hits_that_count() -> None:
    with _faults.armed("before_tool_call", target="charge|refund", nth=2, action="raise") as fault:
        _faults.point("before_tool_call", "tool:lookup")
        _faults.point("before_tool_call")  # no target: a targeted fault does not count it
        _faults.point("before_tool_call", "tool:refund")
        assert fault.hits == 1
        with pytest.raises(_faults.FaultInjected, match="before_tool_call@charge"):
            _faults.point("before_tool_call", "tool:charge")  # the `tool:` prefix is ignored
    with _faults.armed("after_journal_write", target="attempt", action="raise"):
        _faults.point("after_journal_write", StepKind.STARTED)
        with pytest.raises(_faults.FaultInjected):
            _faults.point("after_journal_write", StepKind.ATTEMPT)


def test_several_faults_count_independently_and_disarm_selectively() -> None:
    first = _faults.arm("before_commit", nth=1, action="raise:OSError")
    second = _faults.arm("before_commit", nth=2, action="raise:KeyError")
    with pytest.raises(OSError, match="fault injected"):
        _faults.point("before_commit")
    with pytest.raises(KeyError):
        _faults.point("before_commit")
    assert (first.hits, second.hits) == (2, 2)
    _faults.disarm(first)
    assert _faults.active() == (second,)
    with pytest.raises(RuntimeError), _faults.armed("lease_renew", action="raise"):
        raise RuntimeError  # `armed` disarms on the way out of an exception too
    assert _faults.active() == (second,)


def test_an_unregistered_name_at_a_call_site_is_an_error_once_anything_is_armed() -> None:
    _faults.point("no_such_point")  # disabled: not even looked at
    with _faults.armed("before_commit", action="raise"), pytest.raises(_faults.FaultSpecError):
        _faults.point("no_such_point")


# ---- actions -------------------------------------------------------------------------------------


def test_raise_actions() -> None:
    assert issubclass(_faults.FaultInjected, BaseException)
    assert not issubclass(_faults.FaultInjected, Exception)  # the engine records no failure for it
    with _faults.armed("before_commit", action="raise"), pytest.raises(_faults.FaultInjected):
        _faults.point("before_commit")
    with (
        _faults.armed("before_commit", action="raise:ConnectionResetError"),
        pytest.raises(ConnectionResetError),
    ):
        _faults.point("before_commit")
    with (
        _faults.armed("before_commit", action="raise:concurrent.futures.TimeoutError"),
        pytest.raises(TimeoutError),
    ):
        _faults.point("before_commit")


def test_sleep_action() -> None:
    with _faults.armed("lease_renew", action="sleep:0.2") as fault:
        started = time.perf_counter()
        _faults.point("lease_renew")
        assert time.perf_counter() - started >= 0.2
        started = time.perf_counter()
        _faults.point("lease_renew")  # once only
        assert time.perf_counter() - started < 0.1
    assert fault.fired


def test_kill_action_sigkills_the_process() -> None:
    code = "from perdure import _faults\nfor n in ('one', 'two'):\n"
    code += "    _faults.point('before_commit')\n    print(n, flush=True)"
    proc = _python(code, "before_commit:2")
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.split() == ["one"]
    assert "perdure._faults: kill at before_commit (hit 2" in proc.stderr


def test_exit_action_exits_without_cleanup() -> None:
    code = "import atexit\nfrom perdure import _faults\natexit.register(print, 'cleanup')\n"
    code += "_faults.point('before_commit')"
    default = _python(code, "before_commit:exit")
    assert default.returncode == _faults.EXIT_CODE and "cleanup" not in default.stdout
    assert _python(code, "before_commit:exit:3").returncode == 3


def test_torn_action_writes_half_a_journal_line_then_dies(tmp_path: Path) -> None:
    code = """
import asyncio, sys
from perdure.records import ExecutionRecord, StepKind, StepRecord
from perdure.storage import FileDurableStorage

async def main():
    storage = FileDurableStorage(sys.argv[1], fsync=False)
    head = ExecutionRecord(execution_id="torn-1")
    await storage.save_state_async(head)
    for seq in range(3):
        head = head.model_copy(update={"next_seq": seq + 1})
        step = StepRecord(
            execution_id="torn-1", seq=seq, kind=StepKind.OTHER, name="s", key=f"s#{seq}", result="x" * 50
        )
        await storage.append_step_async(head, step)

asyncio.run(main())
"""
    proc = _python(code, "before_journal_line:2:torn", str(tmp_path))
    assert proc.returncode == -9, proc.stderr
    journal = next(tmp_path.rglob("journal.jsonl")).read_bytes()
    complete, _, torn = journal.rpartition(b"\n")
    assert complete.count(b"\n") == 0 and len(torn) > 10  # one line, then half of the second
    storage = FileDurableStorage(tmp_path)
    try:
        assert [step.seq for step in storage.load_steps("torn-1")] == [0]  # the torn line is not an entry
    finally:
        storage.close()


# ---- the disabled cost ---------------------------------------------------------------------------


def test_disarmed_points_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: Any) -> None:
        raise AssertionError("a disarmed point must not look further than its one check")

    monkeypatch.setattr(_faults, "_hit", never)
    for name in _faults.POINTS:
        assert _faults.point(name) is None
        assert _faults.point(name, "tool:x", tear=(-1, b"")) is None
    calls = 200_000
    seconds = min(timeit.repeat(lambda: _faults.point("before_journal_write"), number=calls, repeat=3))
    # Printed, not asserted (timings are not tests): a few dozen ns per call on this machine.
    print(f"disarmed fault point: {seconds / calls * 1e9:.0f} ns per call (lambda call included)")


# ---- every registered point is reached ---------------------------------------------------------


def test_call_sites_and_registry_match() -> None:
    """Every `_faults.point("...")` names a registered point, and every registered point has a call site."""
    pattern = re.compile(r"""_faults\.point\(\s*["']([a-z_]+)["']""")
    sites: dict[str, set[str]] = {}
    for folder in ("src", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "test_faults.py":
                continue
            for name in pattern.findall(path.read_text()):
                sites.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert set(sites) <= set(_faults.POINTS), set(sites) - set(_faults.POINTS)
    library = {name for name, paths in sites.items() if any(p.startswith("src/") for p in paths)}
    # `after_tool_side_effect` is the one point that tools (the test apps) pass themselves.
    assert set(_faults.POINTS) - library == {"after_tool_side_effect"}
    assert any(p.startswith("tests/") for p in sites["after_tool_side_effect"])
    assert all(doc.strip() for doc in _faults.POINTS.values())


def _probe_agent() -> PydanticAgent[None, str]:
    async def slow_tool(item: str) -> str:
        """Take a while (so the lease heartbeat renews), act, then pass the side-effect point."""
        await asyncio.sleep(0.25)
        _faults.point("after_tool_side_effect", "slow_tool")
        return f"did {item}"

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if sum(isinstance(m, ModelResponse) for m in messages) == 0:
            return ModelResponse(parts=[ToolCallPart("slow_tool", {"item": "x"})])
        return ModelResponse(parts=[TextPart("done")])

    return PydanticAgent(
        FunctionModel(respond), name="fault-probe", tools=[slow_tool], capabilities=[PerdureDurability()]
    )


async def test_every_registered_point_is_reached_by_a_real_run(tmp_path: Path) -> None:
    """Probes that never fire (nth beyond reach) count the hits of every point in real runs."""
    probes = {name: _faults.arm(name, nth=10**9, action="raise") for name in _faults.POINTS}
    agent = _probe_agent()
    for url in (f"sqlite:///{tmp_path / 'p.db'}", f"file://{tmp_path / 'files'}"):
        storage = storage_from_url(url)
        try:
            durable = DurableExecution(storage, execution_id="probe-1", auto_cleanup=False, lease_ttl=0.3)
            result = await durable.run_agent_async(agent, "go")
            assert result.output == "done"
            assert await storage.delete_state_async("probe-1")
            flow = DurableExecution(storage, execution_id="probe-2", auto_cleanup=False)
            assert await flow.run_workflow_async(_probe_workflow) == "slept"
        finally:
            await storage.close_async()
    unreached = sorted(name for name, probe in probes.items() if probe.hits == 0)
    assert unreached == [], f"fault points no run reached: {unreached}"
    assert not any(probe.fired for probe in probes.values())


@perdure.step
async def _probe_step() -> str:
    return "stepped"


@perdure.workflow(name="fault-probe-workflow")
async def _probe_workflow() -> str:
    """A step (`after_step`) and a sleep that waits (`before_sleep_wait`)."""
    await _probe_step()
    await perdure.sleep(0.05)
    return "slept"


# ---- what the points mean in a run ---------------------------------------------------------------


async def test_a_fault_between_effect_and_journal_write_reruns_only_that_unit(tmp_path: Path) -> None:
    """`before_journal_write` at the tool's entry: the model request is stored, the tool result is not."""
    storage = SQLiteDurableStorage(tmp_path / "j.db")
    agent = _probe_agent()
    try:
        with _faults.armed("before_journal_write", target="tool_call", action="raise") as fault:
            durable = DurableExecution(storage, execution_id="j-1", auto_cleanup=False)
            with pytest.raises(_faults.FaultInjected):
                await durable.run_agent_async(agent, "go")
        assert fault.fired
        head = await storage.load_state_async("j-1")
        assert head is not None and head.status is ExecutionStatus.SUCCESS  # no failure recorded
        assert [s.kind for s in await storage.load_steps_async("j-1")] == [StepKind.MODEL_REQUEST]
        result = await DurableExecution(storage, execution_id="j-1").resume_agent_async(agent)
        assert result.output == "done"
        assert result.head.replay.replayed_model_requests == 1 and result.head.replay.executed_tool_calls == 1
    finally:
        await storage.close_async()


async def test_a_failed_lease_renewal_is_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage = SQLiteDurableStorage(tmp_path / "l.db")
    try:
        with (
            caplog.at_level(logging.WARNING, "perdure"),
            _faults.armed("lease_renew", action="raise:OSError") as fault,
        ):
            durable = DurableExecution(storage, execution_id="l-1", auto_cleanup=False, lease_ttl=0.3)
            result = await durable.run_agent_async(_probe_agent(), "go")
        assert fault.fired and fault.hits >= 2  # the heartbeat went on renewing after the failure
        assert result.output == "done"
        assert "lease renewal failed, will retry" in caplog.text
    finally:
        await storage.close_async()
