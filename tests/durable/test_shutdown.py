"""Shutdown while a tool runs: a sync tool keeps its lease until its thread returns; async ones are cancelled.

pydantic-ai runs a sync tool in a thread, which nothing can interrupt. The engine used to cancel
the resume at the end of a worker's SIGTERM grace period (or a recovery `timeout=`) anyway, release
the lease and log "journal intact, lease released", while the abandoned thread went on and performed
its effect seconds later; by then another worker had taken the execution over and run the same call
again: the effect happened twice. Now a unit that is cancelled while its thread runs waits for the
thread (the heartbeat keeps the lease alive), journals the result, and only then lets the
cancellation through and releases the lease. Async tools are still cancelled at the grace period,
before their effect, and the next worker runs them once.

Each case uses two real `perdure worker` processes (`support.shutdown_app:resolve`): worker A resumes two
interrupted executions, one whose next unit is a slow sync tool and one with a slow async tool (3 s
each, the effect at the END of the sleep), is sent SIGTERM while both run, and worker B is started at
the same moment. The per-process ledger (`started`/`effect` lines with idempotency key, pid and time)
shows which process ran what, and when.

Why these tests fail on the old behaviour (sync case): A released the lease 0.5 s after SIGTERM
while its thread still slept, so (1) the head sampled 1 s after SIGTERM had no lease owner instead of
A's; (2) B resumed the execution, found no journaled result for the slow tool and ran it itself (a
`started` line from B); and (3) A's thread still wrote its effect (the interpreter joins executor
threads before exiting), so the call's idempotency key has two `effect` lines, A's and B's. The
in-process timeout test fails the same way: the lease is released at the 0.5 s timeout while the
thread runs, so a second pass would run the call again. (Checked by making `JournalRun._run_body`
cancel regardless of `threads.busy`: every worker case fails with "an effect happened twice", the
in-process one on the lease samples.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from perdure.durable import DurableExecution
from perdure.records import ExecutionStatus, StepKind
from perdure.storage import DurableExecutionStorage, storage_from_url
from support import shutdown_app
from support.paths import SRC, TESTS
from support.storages import backend_url
from support.workers import stop

pytestmark = pytest.mark.crash

SLOW = 3.0
"""Seconds the slow tool sleeps before its effect; longer than an unrenewed lease (`LEASE_TTL`)."""
GRACE = 0.5
LEASE_TTL = 2.0
"""The heartbeat (every TTL/3) must keep the lease through the whole slow call, not just its start."""
WORKER_ARGS = (
    "--concurrency",
    "2",
    "--poll-interval",
    "0.2",
    "--grace-period",
    str(GRACE),
    "--lease-ttl",
    str(LEASE_TTL),
)

_REFERENCE: dict[str, Any] = {}


class Line(NamedTuple):
    kind: str
    key: str
    pid: int
    at: float

    @property
    def execution_id(self) -> str:
        return self.key.split(":", 1)[0]


def read_ledger(directory: Path) -> list[Line]:
    """Every `started`/`effect` line of every process, in time order."""
    lines = []
    for path in directory.glob("ledger-*"):
        for text in path.read_text().splitlines():
            kind, key, pid, at = text.split(" ")
            lines.append(Line(kind, key, int(pid), float(at)))
    return sorted(lines, key=lambda line: line.at)


def reference_output(mode: str) -> Any:
    if mode not in _REFERENCE:
        _REFERENCE[mode] = asyncio.run(shutdown_app.reference_output(mode))
    return _REFERENCE[mode]


def interrupt(storage: DurableExecutionStorage, ids: list[str], mode: str) -> None:
    async def create() -> None:
        for execution_id in ids:
            await shutdown_app.interrupt(storage, execution_id, mode)

    asyncio.run(create())


def start_worker(url: str, ledger: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "WORKER_LEDGER_DIR": str(ledger), "SHUTDOWN_SLOW": str(SLOW)}
    command = [
        sys.executable,
        "-m",
        "perdure.cli",
        "worker",
        "--storage",
        url,
        "--app",
        "support.shutdown_app:resolve",
    ]
    return subprocess.Popen(
        [*command, *WORKER_ARGS],
        env=env,
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], sig: int | None, timeout: float = 30) -> str:
    """`support.workers.stop`, then require a clean exit (code 0, no traceback); return stderr."""
    code, err = stop(proc, sig, timeout)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return err


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


# ---- two real workers ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis", "file"])
def test_sigterm_during_slow_tools_hands_over_with_every_effect_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One sync and one async execution per worker pair: both modes per backend, at half the cost.

    Running them side by side also shows that the sync call's deferred cancellation does not hold
    back the async one: A releases the async execution at the grace period, B resumes it at once.
    """
    url = backend_url(kind, tmp_path, request)
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    monkeypatch.setenv("WORKER_LEDGER_DIR", str(ledger))  # the interrupted runs' units count too
    modes = {"sync-0": "sync", "async-0": "async"}
    expected = {execution_id: reference_output(mode) for execution_id, mode in modes.items()}
    storage = storage_from_url(url)
    for execution_id, mode in modes.items():
        interrupt(storage, [execution_id], mode)
    assert all((h := storage.load_state(i)) and h.status is ExecutionStatus.SUCCESS for i in modes)

    a = start_worker(url, ledger)
    b: subprocess.Popen[str] | None = None
    try:
        wait_until(
            lambda: (
                {ln.execution_id for ln in read_ledger(ledger) if ln.kind == "started"} == set(modes)
                or a.poll() is not None
            ),
            30,
            "worker A to start the slow tool of both executions",
        )
        assert a.poll() is None, a.communicate()[1][-3000:]
        sigterm_at = time.time()
        a.send_signal(signal.SIGTERM)
        b = start_worker(url, ledger)

        # Past the grace period, while the sync call still runs in A: who holds the leases?
        time.sleep(max(sigterm_at + 2 * GRACE - time.time(), 0))
        owners = {i: ((h := storage.load_state(i)) and h.lease_owner) or "" for i in modes}
        err_a = finish(a, sig=None)
        a_exited_at = time.time()
        wait_until(
            lambda: (
                all((h := storage.load_state(i)) and h.status is ExecutionStatus.COMPLETED for i in modes)
                or b.poll() is not None
            ),
            30,
            "both executions to complete",
        )
        finish(b, signal.SIGTERM)
    except BaseException:
        for name, proc in (("A", a), ("B", b)):
            if proc is not None and proc.returncode is None:
                proc.kill()
                print(f"---- worker {name} ({proc.pid}) stderr:\n{proc.communicate()[1][-4000:]}")
        print("---- heads:", *(storage.load_state(i) for i in modes), sep="\n")
        print("---- ledger:", *read_ledger(ledger), sep="\n")
        raise

    assert b is not None
    heads = {i: storage.load_state(i) for i in modes}
    for execution_id, head in heads.items():
        assert head is not None
        assert head.status is ExecutionStatus.COMPLETED, head
        assert head.output == expected[execution_id]
        assert head.lease_owner is None
        assert head.attempts == 3  # the interrupted run, A's resume, B's resume: each resumed once

    lines = read_ledger(ledger)
    effects = Counter(ln.key for ln in lines if ln.kind == "effect")
    assert [k for k, n in effects.items() if n > 1] == [], "an effect happened twice"
    assert len(effects) == 2 * 7  # per execution: prepare, process, notify and four model requests
    started = [ln for ln in lines if ln.kind == "started"]
    slow: dict[str, tuple[list[int], Line, list[Line]]] = {}
    for execution_id in modes:
        slow_key = next(ln.key for ln in started if ln.execution_id == execution_id)
        runs = [ln.pid for ln in started if ln.key == slow_key]
        (effect,) = [ln for ln in lines if ln.key == slow_key and ln.kind == "effect"]
        b_units = [ln for ln in lines if ln.execution_id == execution_id and ln.pid == b.pid]
        slow[execution_id] = (runs, effect, b_units)

    # Sync: A waited for its thread. The call ran once, in A; its effect came after the grace period,
    # with A's lease still held (renewed past its TTL); B resumed only after A released it, so all B
    # ran came after A's effect, and B replayed the call from the journal instead of running it.
    runs, effect, b_units = slow["sync-0"]
    assert runs == [a.pid] and effect.pid == a.pid
    assert effect.at > sigterm_at + GRACE  # the cancellation really arrived while the thread ran
    assert effect.at <= a_exited_at
    assert f":{a.pid}:" in owners["sync-0"], owners
    assert b_units and min(ln.at for ln in b_units) > effect.at
    replay = heads["sync-0"].replay  # type: ignore[union-attr]
    assert (replay.replayed_tool_calls, replay.executed_tool_calls) == (2, 1)  # prepare+process | notify

    # Async: A cancelled the call at the grace period, before its effect, and released the lease at
    # once (it did not wait for the sync call); B ran the call once.
    runs, effect, b_units = slow["async-0"]
    assert runs == [a.pid, b.pid] and effect.pid == b.pid
    assert f":{a.pid}:" not in owners["async-0"], owners
    replay = heads["async-0"].replay  # type: ignore[union-attr]
    assert (replay.replayed_tool_calls, replay.executed_tool_calls) == (1, 2)  # prepare | process+notify
    assert "keeping the lease until it returns" in err_a  # the sync call's deferred cancellation
    assert err_a.count("cancelled by shutdown") == 2
    storage.close()


# ---- in-process recovery timeout -----------------------------------------------------------------


async def test_recovery_timeout_waits_for_the_sync_tool_then_a_later_pass_completes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = 2.0
    monkeypatch.setenv("WORKER_LEDGER_DIR", str(tmp_path))
    expected = await shutdown_app.reference_output("sync")
    monkeypatch.setenv("SHUTDOWN_SLOW", str(slow))
    storage = storage_from_url(f"sqlite:///{tmp_path / 'timeout.db'}")
    await shutdown_app.interrupt(storage, "t-0", "sync")

    def slow_lines(kind: str) -> list[Line]:  # lines of the slow call (its key is the one `started`)
        lines = [ln for ln in read_ledger(tmp_path) if ln.execution_id == "t-0"]
        keys = {ln.key for ln in lines if ln.kind == "started"}
        return [ln for ln in lines if ln.kind == kind and ln.key in keys]

    def all_effects() -> Counter[str]:
        return Counter(
            ln.key for ln in read_ledger(tmp_path) if ln.kind == "effect" and ln.execution_id == "t-0"
        )

    started = time.monotonic()
    first = asyncio.create_task(
        DurableExecution.recover_interrupted_async(storage, shutdown_app.resolve, timeout=0.5, lease_ttl=1.0)
    )
    while not slow_lines("started"):
        assert not first.done(), first
        await asyncio.sleep(0.02)

    # Sample the head until the first pass returned and the call's effect happened: the lease stays
    # held (renewed past its 1s TTL) while the thread runs, and when it is finally released the
    # call's result is already journaled. A second pass, after the timeout, must find it leased.
    samples: list[tuple[float, bool, str | None, bool]] = []
    second: Any = None
    first_done_at: float | None = None
    while not first.done() or not slow_lines("effect") or second is None:
        head = await storage.load_state_async("t-0")
        assert head is not None
        journaled = any(s.name == "tool:process_sync" for s in await storage.load_steps_async("t-0"))
        samples.append((time.monotonic() - started, bool(slow_lines("effect")), head.lease_owner, journaled))
        if second is None and time.monotonic() - started > 1.0:  # the timeout fired; the thread still runs
            second = await DurableExecution.recover_interrupted_async(storage, shutdown_app.resolve)
        if first.done() and first_done_at is None:
            first_done_at = time.monotonic()
        await asyncio.sleep(0.05)
    report = await first
    elapsed = (first_done_at or time.monotonic()) - started

    assert all(owner for _, effect, owner, _ in samples if not effect), samples
    assert any(at > 1.0 and owner for at, effect, owner, _ in samples if not effect), samples  # after timeout
    assert all(journaled for _, _, owner, journaled in samples if owner is None), samples
    # The pass run while the thread ran found the lease held and left the execution alone.
    assert second.recovered == [] and "leased by" in second.skipped.get("t-0", ""), second
    assert list(report.failed) == ["t-0"] and "timed out" in report.failed["t-0"], report
    assert elapsed >= slow  # the timed-out resume returned only once the thread had returned
    head = await storage.load_state_async("t-0")
    assert head is not None
    assert head.status is ExecutionStatus.SUCCESS and head.lease_owner is None  # failed pass, journal intact
    steps = await storage.load_steps_async("t-0")
    assert [s.name for s in steps if s.kind is StepKind.TOOL_CALL] == ["tool:prepare", "tool:process_sync"]
    assert len(slow_lines("effect")) == 1
    assert sum(all_effects().values()) == 4  # model, prepare, model (interrupted run) and the slow call

    report = await DurableExecution.recover_interrupted_async(storage, shutdown_app.resolve)
    assert report.recovered == ["t-0"], report
    head = await storage.load_state_async("t-0")
    assert head is not None and head.status is ExecutionStatus.COMPLETED and head.output == expected
    assert len(slow_lines("started")) == 1  # the later pass replayed the call, it did not run it again
    assert len(slow_lines("effect")) == 1
    effects = all_effects()
    assert len(effects) == 7 and set(effects.values()) == {1}
    storage.close()


async def test_a_cancelled_sync_tool_under_a_retry_policy_is_not_tried_again() -> None:
    """Cancelled while a try runs in its thread: that try's failure is journaled, no further try starts."""
    import time as _time

    from pydantic_ai import Agent as PydanticAgent
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from perdure import DurableExecution, RetryPolicy
    from perdure.durable import PerdureDurability
    from perdure.records import StepKind
    from perdure.storage import InMemoryDurableStorage

    tries: list[float] = []

    def flaky() -> str:
        tries.append(_time.monotonic())
        _time.sleep(0.5)
        raise ConnectionError("upstream reset")

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("flaky", {}, tool_call_id="c1")])
        return ModelResponse(parts=[TextPart("done")])

    agent = PydanticAgent(
        FunctionModel(script),
        name="flaky-app",
        tools=[flaky],
        capabilities=[PerdureDurability(tool_retry=RetryPolicy(max_retries=5, retry_delay=0.01))],
    )
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    task = asyncio.create_task(durable.run_agent_async(agent, "go"))
    while not tries:
        await asyncio.sleep(0.01)
    started = _time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(tries) == 1 and _time.monotonic() - started < 1.5
    steps = storage.load_steps(durable.execution_id)
    assert [s.kind for s in steps].count(StepKind.ATTEMPT) == 1
    head = storage.load_state(durable.execution_id)
    assert head is not None and head.lease_owner is None
