"""RetryPolicy, error classification, Retry-After, the retry loop and the circuit breaker, in-process.

Exceptions are the real `openai`, `httpx2` and pydantic-ai classes built from real request and
response objects; the breaker runs on a fake clock so its state machine is exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx2
import openai
import pytest
from pydantic import BaseModel, ValidationError
from pydantic_ai.exceptions import (
    ModelConnectionError,
    ModelHTTPError,
    ModelQuotaExceededError,
    ModelRateLimitError,
    ModelRequestTimeout,
    ModelRetry,
    ModelTimeoutError,
    RunTimedOut,
    ToolFailed,
    UnexpectedModelBehavior,
    UsageLimitExceeded,
)
from pydantic_ai.exceptions import UserError as PydanticAIUserError

from perdure.durable.circuit import CircuitBreaker, circuit_breaker_for, circuit_stats, reset_circuit_breakers
from perdure.durable.retry import RetryPolicy, call_with_retry
from perdure.durable.transient import is_transient, retry_after_seconds
from perdure.errors import CircuitOpenError, PerdureError, StepConflictError, UserError
from perdure.models.openai import openai_chat_model

REQUEST = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")


def _response(status: int, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.Response(status, request=REQUEST, headers=headers or {})


def _status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    classes: dict[int, type[openai.APIStatusError]] = {
        400: openai.BadRequestError,
        401: openai.AuthenticationError,
        404: openai.NotFoundError,
        409: openai.ConflictError,
        422: openai.UnprocessableEntityError,
        429: openai.RateLimitError,
    }
    cls = classes.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return cls(f"HTTP {status}", response=_response(status, headers), body=None)


def _validation_error() -> ValidationError:
    class M(BaseModel):
        x: int

    try:
        M.model_validate({"x": "nope"})
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise outer from inner
    except BaseException as exc:
        return exc


# ---- RetryPolicy validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"max_retries": "3"},
        {"max_retries": True},
        {"max_retries": 1.5},
        {"retry_delay": -0.1},
        {"retry_delay": math.nan},
        {"retry_delay": math.inf},
        {"max_delay": 0.5, "retry_delay": 1.0},
        {"max_delay": math.inf},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"jitter": True},
        {"exponential_backoff": "yes"},
        {"retry_on_errors": (int,)},
        {"retry_on_errors": ()},
        {"retry_on_errors": (CircuitOpenError,)},
        {"retry_on_errors": (PerdureError, ValueError)},
        {"retry_on_errors": (ModelRetry,)},
    ],
)
def test_policy_rejects_bad_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UserError, match="RetryPolicy"):
        RetryPolicy(**kwargs)


def test_policy_defaults_and_normalization() -> None:
    policy = RetryPolicy()
    assert (policy.max_retries, policy.retry_delay, policy.exponential_backoff) == (3, 1.0, True)
    assert (policy.max_delay, policy.jitter, policy.retry_on_errors) == (60.0, 0.1, None)
    listed = RetryPolicy(retry_on_errors=[ValueError, KeyError])  # type: ignore[arg-type]
    assert listed.retry_on_errors == (ValueError, KeyError)
    assert RetryPolicy(max_retries=0, retry_delay=0, max_delay=0, jitter=0).delay_for(1) == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_retries = 5  # type: ignore[misc]


# ---- delays ------------------------------------------------------------------------------------


def test_exponential_backoff_is_capped() -> None:
    policy = RetryPolicy(retry_delay=0.1, max_delay=1.0, jitter=0.0)
    assert [policy.delay_for(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert policy.delay_for(10_000) == 1.0  # no float overflow for absurd counts
    assert policy.delay_for(0) == pytest.approx(0.1)  # treated as the first failure


def test_constant_backoff() -> None:
    policy = RetryPolicy(retry_delay=0.25, exponential_backoff=False, jitter=0.0)
    assert {policy.delay_for(n) for n in range(1, 20)} == {0.25}


def test_jitter_stays_within_its_fraction() -> None:
    policy = RetryPolicy(retry_delay=1.0, max_delay=100.0, jitter=0.2)
    for n, base in ((1, 1.0), (3, 4.0)):
        samples = [policy.delay_for(n) for _ in range(2000)]
        assert min(samples) >= base * 0.8
        assert max(samples) <= base * 1.2
        assert len(set(samples)) > 100  # actually random
        assert sum(samples) / len(samples) == pytest.approx(base, rel=0.05)
    capped = RetryPolicy(retry_delay=1.0, max_delay=1.0, jitter=0.5)
    assert max(capped.delay_for(1) for _ in range(500)) <= 1.0


def test_retry_after_is_a_floor_capped_by_max_delay() -> None:
    policy = RetryPolicy(retry_delay=0.01, max_delay=2.0, jitter=0.0)
    err = ModelHTTPError(429, "m", headers={"Retry-After": "0.75"})
    assert retry_after_seconds(err) == pytest.approx(0.75)
    assert policy.delay_for(1, err) == pytest.approx(0.75)
    assert policy.delay_for(8, err) == pytest.approx(1.28)  # backoff already longer than the hint
    long_wait = ModelHTTPError(429, "m", headers={"retry-after": "3600"})
    assert policy.delay_for(1, long_wait) == 2.0


def test_retry_after_sources() -> None:
    ms = ModelHTTPError(503, "m", headers={"retry-after-ms": "250", "retry-after": "9"})
    assert retry_after_seconds(ms) == pytest.approx(0.25)
    sdk = _status_error(429, {"Retry-After": "1.5"})
    assert retry_after_seconds(sdk) == pytest.approx(1.5)
    wrapped = _chained(RuntimeError("wrapped by something else"), _status_error(429, {"retry-after": "2"}))
    assert retry_after_seconds(wrapped) == pytest.approx(2.0)
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_seconds(ModelHTTPError(429, "m", headers={"Retry-After": future})) or 0) <= 31
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(ModelHTTPError(429, "m", headers={"Retry-After": past})) == 0.0
    status_error = httpx2.HTTPStatusError("x", request=REQUEST, response=_response(503, {"Retry-After": "4"}))
    assert retry_after_seconds(status_error) == pytest.approx(4.0)
    parsed = ModelRateLimitError("m", "slow down", retry_after=3.0)
    assert retry_after_seconds(parsed) == 3.0
    for junk in ("soon", "-5", "nan", "inf"):
        assert retry_after_seconds(ModelHTTPError(429, "m", headers={"Retry-After": junk})) is None, junk
    assert retry_after_seconds(ModelHTTPError(500, "m")) is None
    assert retry_after_seconds(None) is None


# ---- classification ------------------------------------------------------------------------------

TRANSIENT: list[tuple[str, BaseException]] = [
    ("TimeoutError", TimeoutError()),
    ("ConnectionResetError", ConnectionResetError("reset")),
    ("ConnectionRefusedError", ConnectionRefusedError("refused")),
    ("BrokenPipeError", BrokenPipeError()),
    ("httpx ConnectTimeout", httpx2.ConnectTimeout("t", request=REQUEST)),
    ("httpx ReadTimeout", httpx2.ReadTimeout("t", request=REQUEST)),
    ("httpx ConnectError", httpx2.ConnectError("c", request=REQUEST)),
    ("httpx RemoteProtocolError", httpx2.RemoteProtocolError("disconnected", request=REQUEST)),
    ("httpx status 502", httpx2.HTTPStatusError("x", request=REQUEST, response=_response(502))),
    ("openai APIConnectionError", openai.APIConnectionError(request=REQUEST)),
    ("openai APITimeoutError", openai.APITimeoutError(REQUEST)),
    ("openai 408", _status_error(408)),
    ("openai 409", _status_error(409)),
    ("openai 425", _status_error(425)),
    ("openai 429", _status_error(429)),
    ("openai 500", _status_error(500)),
    ("openai 503", _status_error(503)),
    ("openai 599", _status_error(599)),
    ("ModelHTTPError 500", ModelHTTPError(500, "m")),
    ("ModelHTTPError 408", ModelHTTPError(408, "m")),
    (
        "ModelHTTPError rate limit",
        ModelHTTPError.for_category(ModelRateLimitError, status_code=429, model_name="m"),
    ),
    ("ModelConnectionError", ModelConnectionError("m", "Connection error.")),
    ("ModelTimeoutError", ModelTimeoutError("m", "Request timed out.")),
    ("ModelRequestTimeout", ModelRequestTimeout("m", 5.0)),
    ("ModelRateLimitError (no status)", ModelRateLimitError("m", "throttled")),
]

PERMANENT: list[tuple[str, BaseException]] = [
    ("ValueError", ValueError("bad")),
    ("RuntimeError", RuntimeError("bug")),
    ("KeyError", KeyError("k")),
    ("pydantic ValidationError", _validation_error()),
    ("pydantic-ai UserError", PydanticAIUserError("misuse")),
    ("UsageLimitExceeded", UsageLimitExceeded("too many requests")),
    ("UnexpectedModelBehavior", UnexpectedModelBehavior("weird")),
    ("RunTimedOut (also a TimeoutError)", RunTimedOut("run deadline")),
    ("ModelRetry", ModelRetry("try other args")),
    ("ToolFailed", ToolFailed("tell the model")),
    ("perdure UserError", UserError("misuse")),
    ("CircuitOpenError", CircuitOpenError("m", 1.0)),
    ("StepConflictError", StepConflictError("e", 3)),
    ("openai 400", _status_error(400)),
    ("openai 401", _status_error(401)),
    ("openai 404", _status_error(404)),
    ("openai 422", _status_error(422)),
    ("httpx status 400", httpx2.HTTPStatusError("x", request=REQUEST, response=_response(400))),
    ("ModelHTTPError 400", ModelHTTPError(400, "m")),
    ("ModelHTTPError 403", ModelHTTPError(403, "m")),
    (
        "quota 429",
        ModelHTTPError.for_category(ModelQuotaExceededError, status_code=429, model_name="m"),
    ),
]


@pytest.mark.parametrize(("label", "exc"), TRANSIENT, ids=[t[0] for t in TRANSIENT])
def test_transient_errors(label: str, exc: BaseException) -> None:
    assert is_transient(exc), label
    assert RetryPolicy().should_retry(exc)


@pytest.mark.parametrize(("label", "exc"), PERMANENT, ids=[p[0] for p in PERMANENT])
def test_permanent_errors(label: str, exc: BaseException) -> None:
    assert not is_transient(exc), label
    assert not RetryPolicy().should_retry(exc)


def test_retry_on_errors_replaces_the_classification() -> None:
    class Flaky(Exception):
        pass

    policy = RetryPolicy(retry_on_errors=(Flaky, openai.RateLimitError))
    assert policy.should_retry(Flaky())
    assert not policy.should_retry(ConnectionResetError())  # transient, but not listed
    wrapped = _chained(ModelHTTPError(429, "m"), _status_error(429))
    assert policy.should_retry(wrapped)  # matched on what pydantic-ai wraps
    catch_all = RetryPolicy(retry_on_errors=(Exception,))
    assert catch_all.should_retry(ValueError())
    assert not catch_all.should_retry(CircuitOpenError("m", 1.0))  # perdure's errors: never
    assert not catch_all.should_retry(UserError("x"))
    assert not catch_all.should_retry(ModelRetry("for the model, not for perdure"))
    assert not catch_all.should_retry(RunTimedOut("deadline"))


# ---- call_with_retry ------------------------------------------------------------------------------


class Journal:
    """What `record_failure` journaled, in order."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, str, float]] = []

    async def record(self, attempt: int, exc: BaseException, delay: float) -> None:
        self.entries.append((attempt, type(exc).__name__, delay))


def _flaky(failures: list[BaseException], result: str = "ok") -> tuple[Any, list[int]]:
    calls: list[int] = []

    async def body() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return result

    return body, calls


FAST = RetryPolicy(max_retries=3, retry_delay=0.001, max_delay=0.01, jitter=0.0)


async def test_transient_failures_are_journaled_then_succeed() -> None:
    journal = Journal()
    body, calls = _flaky([ConnectionResetError(), _status_error(503)])
    result = await call_with_retry(
        body,
        policy=FAST,
        breaker=None,
        failed_attempts=0,
        record_failure=journal.record,
        execution_id="e",
        unit_name="model_request",
    )
    assert result == "ok"
    assert len(calls) == 3
    assert [(n, t) for n, t, _ in journal.entries] == [
        (1, "ConnectionResetError"),
        (2, "InternalServerError"),
    ]
    assert [d for *_, d in journal.entries] == pytest.approx([0.001, 0.002])


async def test_permanent_failure_raises_at_once() -> None:
    journal = Journal()
    body, calls = _flaky([_status_error(400)])
    with pytest.raises(openai.BadRequestError):
        await call_with_retry(
            body,
            policy=FAST,
            breaker=None,
            failed_attempts=0,
            record_failure=journal.record,
            execution_id="e",
            unit_name="model_request",
        )
    assert len(calls) == 1
    assert journal.entries == []


async def test_exhausted_retries_raise_the_last_error_and_journal_max_retries_attempts() -> None:
    journal = Journal()
    body, calls = _flaky(
        [ConnectionResetError("1"), TimeoutError("2"), ConnectionResetError("3"), TimeoutError("4")]
    )
    with pytest.raises(TimeoutError, match="4"):
        await call_with_retry(
            body,
            policy=FAST,
            breaker=None,
            failed_attempts=0,
            record_failure=journal.record,
            execution_id="e",
            unit_name="model_request",
        )
    assert len(calls) == FAST.max_retries + 1
    assert [n for n, *_ in journal.entries] == [1, 2, 3]


@pytest.mark.parametrize(("journaled", "tries", "recorded"), [(0, 4, [1, 2, 3]), (2, 2, [3]), (3, 1, [])])
async def test_count_continues_from_the_journal(journaled: int, tries: int, recorded: list[int]) -> None:
    """Attempts journaled by an earlier process count against max_retries; a resume never resets them."""
    journal = Journal()
    body, calls = _flaky([ConnectionResetError() for _ in range(10)])
    with pytest.raises(ConnectionResetError):
        await call_with_retry(
            body,
            policy=FAST,
            breaker=None,
            failed_attempts=journaled,
            record_failure=journal.record,
            execution_id="e",
            unit_name="model_request",
        )
    assert len(calls) == tries
    assert [n for n, *_ in journal.entries] == recorded


async def test_attempt_is_journaled_before_the_backoff_sleep() -> None:
    """A crash while waiting must not lose the count: the journal write comes first."""

    class Crash(BaseException):
        pass

    async def record(attempt: int, exc: BaseException, delay: float) -> None:
        raise Crash(attempt, delay)

    body, calls = _flaky([ConnectionResetError()])
    started = time.monotonic()
    with pytest.raises(Crash) as info:
        await call_with_retry(
            body,
            policy=RetryPolicy(retry_delay=30.0, jitter=0.0),
            breaker=None,
            failed_attempts=0,
            record_failure=record,
            execution_id="e",
            unit_name="model_request",
        )
    assert info.value.args == (1, 30.0)
    assert time.monotonic() - started < 5  # did not sleep first
    assert len(calls) == 1


async def test_no_policy_means_one_try() -> None:
    journal = Journal()
    body, calls = _flaky([ConnectionResetError()])
    with pytest.raises(ConnectionResetError):
        await call_with_retry(
            body,
            policy=None,
            breaker=None,
            failed_attempts=0,
            record_failure=journal.record,
            execution_id="e",
            unit_name="u",
        )
    assert len(calls) == 1
    assert journal.entries == []


async def test_retries_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal()
    body, _ = _flaky([_status_error(502)])
    with caplog.at_level(logging.INFO, logger="perdure"):
        await call_with_retry(
            body,
            policy=FAST,
            breaker=None,
            failed_attempts=0,
            record_failure=journal.record,
            execution_id="exec-1",
            unit_name="model_request",
        )
    records = [r for r in caplog.records if r.name == "perdure"]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert "exec-1" in records[0].getMessage()
    assert "attempt 1/4" in records[0].getMessage()
    assert getattr(records[0], "perdure_attempt", None) == 1


# ---- circuit breaker ---------------------------------------------------------------------------


def _state(breaker: CircuitBreaker) -> str:
    return breaker.state  # a plain str, so the type checker does not narrow it between reads


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_breaker_validation() -> None:
    for kwargs in ({"failure_threshold": 0}, {"failure_threshold": True}, {"reset_timeout": -1}):
        with pytest.raises(UserError, match="CircuitBreaker"):
            CircuitBreaker(**kwargs)


def test_breaker_state_machine() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=10.0, name="gpt-x", clock=clock)
    assert _state(breaker) == "closed"
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # consecutive count resets on success
    breaker.record_failure()
    breaker.record_failure()
    assert _state(breaker) == "closed"
    assert breaker.before_call() is False
    breaker.record_failure()
    assert _state(breaker) == "open"
    stats = breaker.stats()
    assert stats["state"] == "open"
    assert stats["consecutive_failures"] == 3
    assert stats["total_failures"] == 5
    assert stats["total_successes"] == 1
    assert isinstance(stats["opened_at"], float)

    clock.advance(4.0)
    with pytest.raises(CircuitOpenError) as info:
        breaker.before_call(execution_id="exec-9")
    assert info.value.model == "gpt-x"
    assert info.value.retry_in == pytest.approx(6.0)
    assert info.value.execution_id == "exec-9"
    assert breaker.stats()["rejected"] == 1

    clock.advance(6.0)
    assert _state(breaker) == "half_open"
    assert breaker.before_call() is True  # the probe
    with pytest.raises(CircuitOpenError):
        breaker.before_call()  # concurrent callers still fail fast
    breaker.record_failure()  # probe failed: open again, for a full reset_timeout
    assert _state(breaker) == "open"
    clock.advance(9.9)
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    clock.advance(0.1)
    assert breaker.before_call() is True
    breaker.record_success()  # probe succeeded: closed
    assert _state(breaker) == "closed"
    assert breaker.stats()["consecutive_failures"] == 0
    assert breaker.stats()["opened_at"] is None
    assert breaker.stats()["rejected"] == 3


def test_breaker_release_frees_the_probe_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    breaker.record_failure()
    clock.advance(1.0)
    assert breaker.before_call() is True
    breaker.release()  # e.g. the probe was cancelled
    assert breaker.before_call() is True


def test_breaker_single_probe_across_threads() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    breaker.record_failure()
    clock.advance(2.0)
    barrier = threading.Barrier(16)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            probe = breaker.before_call()
            outcome = "probe" if probe else "closed?"
        except CircuitOpenError:
            outcome = "rejected"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["probe"] + ["rejected"] * 15


async def test_breaker_single_probe_across_tasks_and_close_on_success() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=0.05, name="m")
    journal = Journal()
    for _ in range(2):
        body, _ = _flaky([ConnectionResetError()])
        with pytest.raises(ConnectionResetError):
            await call_with_retry(
                body,
                policy=None,
                breaker=breaker,
                failed_attempts=0,
                record_failure=journal.record,
                execution_id="e",
                unit_name="model_request",
            )
    assert _state(breaker) == "open"
    calls: list[int] = []

    async def never() -> str:
        calls.append(1)
        return "x"

    with pytest.raises(CircuitOpenError):  # open: the body is never called
        await call_with_retry(
            never,
            policy=FAST,
            breaker=breaker,
            failed_attempts=0,
            record_failure=journal.record,
            execution_id="e",
            unit_name="model_request",
        )
    assert calls == []
    await asyncio.sleep(0.06)
    gate = asyncio.Event()

    async def slow_probe() -> str:
        calls.append(1)
        await gate.wait()
        return "probe ok"

    async def one() -> str:
        return await call_with_retry(
            slow_probe,
            policy=FAST,
            breaker=breaker,
            failed_attempts=0,
            record_failure=journal.record,
            execution_id="e",
            unit_name="model_request",
        )

    tasks = [asyncio.create_task(one()) for _ in range(8)]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == [1]
    assert results.count("probe ok") == 1
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 7
    assert _state(breaker) == "closed"
    assert journal.entries == []  # CircuitOpenError is never retried


async def test_breaker_opening_mid_retries_stops_without_sleeping() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=60.0, name="m")
    breaker.record_failure()  # another execution's failure on the same model
    journal = Journal()
    body, calls = _flaky([_status_error(500) for _ in range(10)])
    started = time.monotonic()
    with pytest.raises(CircuitOpenError) as info:
        await call_with_retry(
            body,
            policy=RetryPolicy(max_retries=5, retry_delay=30.0, max_delay=30.0, jitter=0.0),
            breaker=breaker,
            failed_attempts=0,
            record_failure=journal.record,
            execution_id="e",
            unit_name="model_request",
        )
    assert time.monotonic() - started < 5  # did not wait out the 30 s back-off
    assert len(calls) == 1
    assert [n for n, *_ in journal.entries] == [1]  # the failure still counts in the journal
    assert isinstance(info.value.__cause__, openai.InternalServerError)


async def test_permanent_error_counts_as_a_reachable_provider() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=60.0)
    journal = Journal()
    breaker.record_failure()
    body, _ = _flaky([_status_error(400)])
    with pytest.raises(openai.BadRequestError):
        await call_with_retry(
            body,
            policy=FAST,
            breaker=breaker,
            failed_attempts=0,
            record_failure=journal.record,
            execution_id="e",
            unit_name="u",
        )
    assert breaker.stats()["consecutive_failures"] == 0


async def test_non_provider_error_gives_the_breaker_no_verdict() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=1.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(1.0)
    journal = Journal()
    body, _ = _flaky([ValueError("a bug in a hook, not the provider")])
    with pytest.raises(ValueError):
        await call_with_retry(
            body,
            policy=FAST,
            breaker=breaker,
            failed_attempts=0,
            record_failure=journal.record,
            execution_id="e",
            unit_name="u",
        )
    assert _state(breaker) == "half_open"  # still waiting for a real probe
    assert breaker.before_call() is True


async def test_cancelled_probe_releases_the_slot() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=0.0)
    breaker.record_failure()
    journal = Journal()

    async def hang() -> str:
        await asyncio.sleep(30)
        return "x"

    task = asyncio.create_task(
        call_with_retry(
            hang,
            policy=None,
            breaker=breaker,
            failed_attempts=0,
            record_failure=journal.record,
            execution_id="e",
            unit_name="u",
        )
    )
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.before_call() is True


def test_registry_shares_one_breaker_per_model_and_reports_stats() -> None:
    reset_circuit_breakers()
    try:
        a = circuit_breaker_for("openai:gpt-a", failure_threshold=2, reset_timeout=5.0)
        assert circuit_breaker_for("openai:gpt-a", failure_threshold=9) is a  # first settings win
        assert a.failure_threshold == 2
        b = circuit_breaker_for("openai:gpt-b")
        assert b is not a
        a.record_failure()
        a.record_failure()
        own = CircuitBreaker(name="direct")
        stats = circuit_stats()
        assert stats["openai:gpt-a"]["state"] == "open"
        assert stats["openai:gpt-b"]["state"] == "closed"
        assert stats["direct"]["state"] == "closed"
        assert set(stats["openai:gpt-a"]) >= {
            "state",
            "consecutive_failures",
            "opened_at",
            "total_failures",
            "total_successes",
            "rejected",
        }
        del own
        with pytest.raises(UserError):
            circuit_breaker_for("")
    finally:
        reset_circuit_breakers()
    assert "openai:gpt-a" not in circuit_stats() or circuit_stats()["openai:gpt-a"] is not None


# ---- provider model without hidden SDK retries ------------------------------------------------------


def test_openai_chat_model_disables_sdk_retries() -> None:
    model = openai_chat_model("gpt-test", base_url="http://127.0.0.1:9/v1", api_key="k", timeout=2.5)
    assert model.model_name == "gpt-test"
    assert model.client.max_retries == 0
    assert model.client.timeout == 2.5
    assert str(model.client.base_url).startswith("http://127.0.0.1:9/v1")
    with pytest.raises(UserError, match="timeout"):
        openai_chat_model("gpt-test", base_url="http://127.0.0.1:9/v1", api_key="k", timeout=0)


# ---- through the engine: tool units -----------------------------------------------------------------


class Flaky(Exception):
    """A tool's own "try again" error."""


async def test_tool_retry_policy_through_the_engine() -> None:
    """A tool's policy (tool metadata) and the agent's `tool_retry` both reach the journal."""
    from pydantic_ai import Agent as PydanticAgent
    from pydantic_ai import Tool
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from perdure.durable import DurableExecution, InMemoryDurableStorage, PerdureDurability, current_step
    from perdure.records import StepKind

    seen: list[tuple[str, int, str]] = []
    failures = {"charge": 2, "lookup": 1}

    def charge(amount: int) -> str:
        """Charge an amount."""
        step = current_step()
        seen.append(("charge", step.attempt, step.idempotency_key))
        if failures["charge"]:
            failures["charge"] -= 1
            raise Flaky("card network busy")
        return f"charged {amount}"

    def lookup(key: str) -> str:
        """Look a key up."""
        step = current_step()
        seen.append(("lookup", step.attempt, step.idempotency_key))
        if failures["lookup"]:
            failures["lookup"] -= 1
            raise ConnectionResetError("upstream reset")
        return f"value of {key}"

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(isinstance(m, ModelResponse) for m in messages)
        if turn == 0:
            return ModelResponse(parts=[ToolCallPart("lookup", {"key": "k"}, tool_call_id="c1")])
        if turn == 1:
            return ModelResponse(parts=[ToolCallPart("charge", {"amount": 5}, tool_call_id="c2")])
        return ModelResponse(parts=[TextPart("done")])

    tool_policy = RetryPolicy(max_retries=2, retry_delay=0.001, jitter=0.0, retry_on_errors=(Flaky,))
    agent_default = RetryPolicy(max_retries=1, retry_delay=0.001, jitter=0.0)
    agent = PydanticAgent(
        FunctionModel(respond),
        name="ToolRetryAgent",
        tools=[lookup, Tool(charge, metadata={"perdure": {"retry": tool_policy}})],
        capabilities=[PerdureDurability(tool_retry=agent_default)],
    )
    storage = InMemoryDurableStorage()
    durable = DurableExecution(storage, auto_cleanup=False)
    result = await durable.run_agent_async(agent, "go")
    assert result.output == "done"
    assert [(name, attempt) for name, attempt, _ in seen] == [
        ("lookup", 1),
        ("lookup", 2),
        ("charge", 1),
        ("charge", 2),
        ("charge", 3),
    ]
    keys = {name: {key for n, _, key in seen if n == name} for name in ("lookup", "charge")}
    assert all(len(k) == 1 for k in keys.values())  # one idempotency key across retries
    steps = await storage.load_steps_async(durable.execution_id)
    attempts = [s.key for s in steps if s.kind is StepKind.ATTEMPT]
    assert attempts == ["attempt:tool:1/c1#1", "attempt:tool:2/c2#1", "attempt:tool:2/c2#2"]
    charge_step = next(s for s in steps if s.key == "tool:2/c2")
    assert charge_step.attempt == 3
