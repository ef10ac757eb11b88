"""Provider faults over real HTTP: durable retries, the circuit breaker, crashes and paid requests.

A pydantic-ai agent with `OpenAIChatModel` (the real `openai` SDK, its own retries disabled) talks
to the scripted OpenAI-compatible server of `support/openai_server.py` on 127.0.0.1; the server injects
HTTP 500/429/400, dropped connections and responses slower than the client's timeout, and counts
every request it receives and every one it answered (`paid`). Executions are journaled in SQLite.
Crash tests run `support/fault_app.py` in subprocesses that die by SIGKILL (at perdure's named fault points,
`PERDURE_FAULT`, or killed from outside) and resume in a new process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perdure.durable import CircuitBreaker, DurableExecution, RetryPolicy, SQLiteDurableStorage
from perdure.durable.execution import AttemptResult
from perdure.errors import CircuitOpenError
from perdure.records import ExecutionStatus, StepKind, StepRecord
from support import fault_app
from support.openai_server import Fault, OpenAIServer
from support.paths import SRC, TESTS

BASELINE = len(fault_app.SCRIPT)
"""Model requests (all paid) of an uninterrupted run: one per scripted turn."""
TOOL_NAMES = ["fetch_rows", "transform_rows", "store_rows", "notify"]
FAST = RetryPolicy(max_retries=3, retry_delay=0.01, max_delay=0.05, jitter=0.0)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(fault_app.SCRIPT) as srv:
        yield srv


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLiteDurableStorage]:
    store = SQLiteDurableStorage(tmp_path / "faults.db")
    yield store
    store.close()


@pytest.fixture(autouse=True)
def _reset_tool_calls() -> None:
    fault_app.TOOL_CALLS.clear()


async def _run(
    server: OpenAIServer,
    storage: SQLiteDurableStorage,
    *,
    retry: RetryPolicy | None = FAST,
    breaker: CircuitBreaker | None = None,
    timeout: float = 5.0,
    execution_id: str | None = None,
    resume: bool = False,
) -> tuple[DurableExecution, AttemptResult[Any] | BaseException]:
    """Run (or resume) one execution; returns the handle and the result or the raised error."""
    agent = fault_app.build_agent(server.url, retry=retry, breaker=breaker, timeout=timeout)
    durable = DurableExecution(storage, auto_cleanup=False, execution_id=execution_id)
    try:
        if resume:
            return durable, await durable.resume_agent_async(agent)
        return durable, await durable.run_agent_async(agent, fault_app.PROMPT)
    except Exception as exc:
        return durable, exc


async def _attempts(storage: SQLiteDurableStorage, execution_id: str) -> list[StepRecord]:
    return [s for s in await storage.load_steps_async(execution_id) if s.kind is StepKind.ATTEMPT]


def _assert_completed(result: AttemptResult[Any] | BaseException) -> None:
    assert isinstance(result, AttemptResult), repr(result)
    assert result.output == "done: stored-3"
    assert result.head.status is ExecutionStatus.COMPLETED


async def test_uninterrupted_run_baseline(server: OpenAIServer, storage: SQLiteDurableStorage) -> None:
    durable, result = await _run(server, storage)
    _assert_completed(result)
    assert (server.requests, server.paid) == (BASELINE, BASELINE)
    assert dict(fault_app.TOOL_CALLS) == dict.fromkeys(TOOL_NAMES, 1)
    assert await _attempts(storage, durable.execution_id) == []


async def test_http_500_is_retried_and_journaled_once(
    server: OpenAIServer, storage: SQLiteDurableStorage
) -> None:
    server.fail(2, Fault.http(500))
    durable, result = await _run(server, storage)
    _assert_completed(result)
    assert server.requests == BASELINE + 1
    assert server.paid == BASELINE
    assert server.requests_for(2) == 2
    attempts = await _attempts(storage, durable.execution_id)
    assert [a.key for a in attempts] == ["attempt:model#3#1"]
    assert attempts[0].result["error"]["type"].endswith("ModelServerError")
    assert "500" in attempts[0].result["error"]["message"]
    steps = await storage.load_steps_async(durable.execution_id)
    model_step = next(s for s in steps if s.key == "model#3")
    assert model_step.attempt == 2
    assert dict(fault_app.TOOL_CALLS) == dict.fromkeys(TOOL_NAMES, 1)


async def test_429_waits_for_retry_after(server: OpenAIServer, storage: SQLiteDurableStorage) -> None:
    server.fail(1, Fault.rate_limited(retry_after=0.4))
    policy = RetryPolicy(max_retries=3, retry_delay=0.01, max_delay=5.0, jitter=0.0)
    started = time.monotonic()
    durable, result = await _run(server, storage, retry=policy)
    elapsed = time.monotonic() - started
    _assert_completed(result)
    assert elapsed >= 0.4  # retry_delay is 0.01: only the header explains the wait
    assert server.requests == BASELINE + 1
    [attempt] = await _attempts(storage, durable.execution_id)
    assert attempt.result["delay"] == pytest.approx(0.4)
    assert attempt.result["error"]["type"].endswith("ModelRateLimitError")


async def test_429_retry_after_is_capped_by_max_delay(
    server: OpenAIServer, storage: SQLiteDurableStorage
) -> None:
    server.fail(0, Fault.rate_limited(retry_after=120))
    policy = RetryPolicy(max_retries=1, retry_delay=0.01, max_delay=0.2, jitter=0.0)
    started = time.monotonic()
    durable, result = await _run(server, storage, retry=policy)
    _assert_completed(result)
    assert 0.2 <= time.monotonic() - started < 10
    [attempt] = await _attempts(storage, durable.execution_id)
    assert attempt.result["delay"] == pytest.approx(0.2)


async def test_dropped_connection_is_retried(server: OpenAIServer, storage: SQLiteDurableStorage) -> None:
    server.fail(3, Fault.drop())
    durable, result = await _run(server, storage)
    _assert_completed(result)
    assert server.requests == BASELINE + 1
    assert server.paid == BASELINE
    assert server.log[3] == (3, "dropped")
    [attempt] = await _attempts(storage, durable.execution_id)
    assert attempt.result["error"]["type"].endswith("ModelConnectionError")


async def test_slow_response_past_client_timeout_is_retried(
    server: OpenAIServer, storage: SQLiteDurableStorage
) -> None:
    server.fail(1, Fault.slow(3.0))
    started = time.monotonic()
    durable, result = await _run(server, storage, timeout=0.3)
    elapsed = time.monotonic() - started
    _assert_completed(result)
    assert elapsed < 3.0  # the retry did not wait for the slow answer
    assert server.requests == BASELINE + 1
    [attempt] = await _attempts(storage, durable.execution_id)
    assert attempt.result["error"]["type"].endswith("ModelTimeoutError")
    server.stop()  # abandons the slow answer
    assert dict(fault_app.TOOL_CALLS) == dict.fromkeys(TOOL_NAMES, 1)


async def test_permanent_400_fails_at_once_and_resume_skips_journaled_requests(
    server: OpenAIServer, storage: SQLiteDurableStorage
) -> None:
    server.fail_always(2, Fault.http(400, "unsupported parameter"))
    durable, error = await _run(server, storage)
    assert isinstance(error, Exception)
    assert type(error).__name__ == "ModelRequestRejectedError"
    assert server.requests == 3  # turns 0, 1 answered; turn 2 refused once, never retried
    assert server.requests_for(2) == 1
    head = await durable.load_head_async()
    assert head.status is ExecutionStatus.FAILED
    assert head.error is not None
    assert head.error.type.endswith("ModelRequestRejectedError")
    assert "400" in head.error.message
    assert await _attempts(storage, durable.execution_id) == []

    server.clear_faults()  # the provider (or our request) was fixed
    _, result = await _run(server, storage, execution_id=durable.execution_id, resume=True)
    _assert_completed(result)
    assert server.requests == BASELINE + 1  # only the refused request was sent twice
    assert server.paid == BASELINE
    assert [server.requests_for(t) for t in range(BASELINE)] == [1, 1, 2, 1, 1]
    assert dict(fault_app.TOOL_CALLS) == dict.fromkeys(TOOL_NAMES, 1)


async def test_exhausted_retries_fail_and_a_resume_continues_the_count(
    server: OpenAIServer, storage: SQLiteDurableStorage
) -> None:
    """max_retries counts over the execution's life: a resume after exhaustion makes ONE more try."""
    policy = RetryPolicy(max_retries=2, retry_delay=0.01, jitter=0.0)
    server.fail_always(1, Fault.http(503, "overloaded"))
    durable, error = await _run(server, storage, retry=policy)
    assert type(error).__name__ in ("ModelUnavailableError", "ModelOverloadedError")
    assert server.requests_for(1) == policy.max_retries + 1
    head = await durable.load_head_async()
    assert head.status is ExecutionStatus.FAILED
    assert head.error is not None and "503" in head.error.message
    assert [a.key for a in await _attempts(storage, durable.execution_id)] == [
        "attempt:model#2#1",
        "attempt:model#2#2",
    ]

    # The fault persists: the resume tries once more and fails, with no new attempt entry.
    _, error = await _run(server, storage, retry=policy, execution_id=durable.execution_id, resume=True)
    assert type(error).__name__ in ("ModelUnavailableError", "ModelOverloadedError")
    assert server.requests_for(1) == policy.max_retries + 2
    assert len(await _attempts(storage, durable.execution_id)) == policy.max_retries
    assert server.requests_for(0) == 1  # the journaled first response was not requested again

    server.clear_faults()
    _, result = await _run(server, storage, retry=policy, execution_id=durable.execution_id, resume=True)
    _assert_completed(result)
    assert server.requests_for(1) == policy.max_retries + 3
    assert server.requests_for(0) == 1
    assert server.paid == BASELINE
    assert dict(fault_app.TOOL_CALLS) == dict.fromkeys(TOOL_NAMES, 1)


class FakeClock:
    """The breaker's clock, advanced by the test: reset timeouts elapse exactly when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_circuit_breaker_fails_fast_then_probes(
    server: OpenAIServer, storage: SQLiteDurableStorage
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=30.0, name="scripted-gpt", clock=clock)
    policy = RetryPolicy(max_retries=10, retry_delay=0.01, jitter=0.0)
    server.fail_always(0, Fault.http(500))

    first, error = await _run(server, storage, retry=policy, breaker=breaker)
    assert isinstance(error, CircuitOpenError)  # opened by this execution's 3rd failure
    assert isinstance(error.__cause__, Exception) and "500" in str(error.__cause__)
    assert server.requests == 3
    assert len(await _attempts(storage, first.execution_id)) == 3
    assert breaker.stats()["state"] == "open"

    clock.now = 29.0
    second, error = await _run(server, storage, retry=policy, breaker=breaker)
    assert isinstance(error, CircuitOpenError)
    assert error.model == "scripted-gpt"
    assert error.retry_in == pytest.approx(1.0)
    assert server.requests == 3  # failed fast: the provider never saw it
    head = await second.load_head_async()
    assert head.status is ExecutionStatus.FAILED
    assert head.error is not None and head.error.type.endswith("CircuitOpenError")
    assert await _attempts(storage, second.execution_id) == []
    assert breaker.stats()["rejected"] == 1

    clock.now = 30.0  # half-open: one probe goes through; it fails, so the breaker opens again
    _, error = await _run(server, storage, retry=policy, breaker=breaker)
    assert isinstance(error, CircuitOpenError)
    assert server.requests == 4
    assert breaker.stats()["state"] == "open"

    server.clear_faults()
    clock.now = 60.0
    _, result = await _run(server, storage, retry=policy, breaker=breaker)
    _assert_completed(result)  # the probe succeeded and closed the breaker for the rest of the run
    assert server.requests == 4 + BASELINE
    stats = breaker.stats()
    assert (stats["state"], stats["consecutive_failures"], stats["rejected"]) == ("closed", 0, 1)

    _, result = await _run(
        server, storage, retry=policy, breaker=breaker, execution_id=first.execution_id, resume=True
    )
    _assert_completed(result)
    assert server.requests == 4 + 2 * BASELINE


# ---- crashes in real subprocesses ------------------------------------------------------------------


def _env(ledger: Path, phase: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(TESTS), str(SRC)]),
        LEDGER=str(ledger),
        PHASE=phase,
        LEASE_TTL="0.6",
        RETRY_DELAY="0.01",
    )
    env.update(extra)
    return env


def _argv(mode: str, url: str, execution_id: str, base_url: str) -> list[str]:
    code = "import sys; from support import fault_app; sys.exit(fault_app.main(sys.argv))"
    return [sys.executable, "-c", code, mode, url, execution_id, base_url]


def _child(
    mode: str, url: str, execution_id: str, server: OpenAIServer, ledger: Path, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _argv(mode, url, execution_id, server.url),
        env=_env(ledger, mode, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _tools(ledger: Path, phase: str | None = None) -> Counter[str]:
    counts: Counter[str] = Counter()
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            who, _, tool = line.split(" ", 2)
            if phase is None or who == phase:
                counts[tool] += 1
    return counts


@pytest.mark.crash
async def test_crash_during_retries_does_not_reset_the_attempt_count(
    server: OpenAIServer, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    ledger = tmp_path / "ledger"
    execution_id = "retry-crash-1"
    server.fail_always(1, Fault.http(500))

    killed_after_attempt_2 = "after_journal_write@attempt:2"
    crashed = _child(
        "start", url, execution_id, server, ledger, MAX_RETRIES="3", PERDURE_FAULT=killed_after_attempt_2
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert server.requests_for(1) == 2  # killed right after journaling attempt 2, in its back-off
    store = SQLiteDurableStorage(tmp_path / "crash.db")
    try:
        assert len(await _attempts(store, execution_id)) == 2

        resumed = _child("resume", url, execution_id, server, ledger, MAX_RETRIES="3")
        assert resumed.returncode == 1, resumed.stderr
        assert json.loads(resumed.stdout)["error"] == "ModelServerError"
        # 2 tries before the crash + 2 after = max_retries + 1 in total, not 2 + (max_retries + 1).
        assert server.requests_for(1) == 3 + 1
        assert len(await _attempts(store, execution_id)) == 3
        assert server.requests_for(0) == 1

        server.clear_faults()  # the provider recovered; finish here (a third process would be slow)
        policy = RetryPolicy(max_retries=3, retry_delay=0.01, jitter=0.0)
        _, result = await _run(server, store, retry=policy, execution_id=execution_id, resume=True)
        _assert_completed(result)
        assert server.requests_for(1) == 3 + 2
        assert server.requests_for(0) == 1
        assert server.paid == BASELINE
        assert _tools(ledger) == {"fetch_rows": 1}  # ran in the crashed process, never again
        assert dict(fault_app.TOOL_CALLS) == dict.fromkeys(TOOL_NAMES[1:], 1)
    finally:
        store.close()


@pytest.mark.crash
@pytest.mark.parametrize("kill_point", ["request_in_flight", "inside_tool"])
async def test_crash_and_resume_pays_only_for_unjournaled_requests(
    server: OpenAIServer, tmp_path: Path, kill_point: str
) -> None:
    """SIGKILL mid-run, resume in a new process: journaled responses are never requested again."""
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    ledger = tmp_path / "ledger"
    execution_id = f"paid-{kill_point}"
    if kill_point == "request_in_flight":
        server.fail(2, Fault.hold())  # turn 2's request reaches the provider; the client dies waiting
        child = subprocess.Popen(
            _argv("start", url, execution_id, server.url),
            env=_env(ledger, "start"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.held.wait(30), "the child never reached turn 2"
            child.send_signal(signal.SIGKILL)  # kill -9 from outside, like the OOM killer
            _, stderr = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
        assert child.returncode == -signal.SIGKILL, stderr
        server.release()  # the provider finishes (and bills) the orphaned request
        assert server.wait_idle()
        in_flight = 1
    else:
        crashed = _child(
            "start", url, execution_id, server, ledger, PERDURE_FAULT="before_tool_call@store_rows"
        )
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        in_flight = 0
    paid_before_crash = server.paid
    assert paid_before_crash == 3  # responses of turns 0, 1 and 2 were produced before the kill
    assert _tools(ledger, "start") == {"fetch_rows": 1, "transform_rows": 1}

    resumed = _child("resume", url, execution_id, server, ledger)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == {"status": "completed", "output": "done: stored-3"}
    assert server.paid == BASELINE + in_flight
    assert server.requests == BASELINE + in_flight
    assert [server.requests_for(t) for t in range(BASELINE)] == [1, 1, 1 + in_flight, 1, 1]
    assert _tools(ledger) == dict.fromkeys(TOOL_NAMES, 1)
    assert _tools(ledger, "resume") == {"store_rows": 1, "notify": 1}


async def test_sdk_retries_do_not_stack_on_a_model_string(
    server: OpenAIServer, storage: SQLiteDurableStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain `openai-chat:` string keeps the SDK's default retries (2); perdure turns them off."""
    from pydantic_ai import Agent

    from perdure.durable import PerdureDurability

    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    server.fail_always(0, Fault.http(500))
    policy = RetryPolicy(max_retries=1, retry_delay=0.01, max_delay=0.05, jitter=0.0)
    agent = Agent(
        "openai-chat:scripted-gpt",
        name="StringAgent",
        tools=fault_app.TOOLS,
        capabilities=[PerdureDurability(retry=policy)],
    )
    durable = DurableExecution(storage, auto_cleanup=False)
    with pytest.raises(Exception, match="500"):
        await durable.run_agent_async(agent, fault_app.PROMPT)
    # Two tries of perdure's policy, one HTTP request each: the SDK did not retry underneath.
    assert server.requests == 2
    assert len(await _attempts(storage, durable.execution_id)) == 1
