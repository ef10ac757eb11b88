"""Durable retries and circuit breaking for model requests and tool calls.

Why durable: every failed try of a unit is journaled (one `attempt` entry, written *before* the
back-off sleep) so the attempt count survives a crash during retries. A resumed execution continues
counting where the crashed process stopped; `RetryPolicy.max_retries` bounds the retries of a unit
over the whole life of the execution, across processes, never per process.

Semantics, in one place:

- **Counting.** A unit may run `max_retries + 1` times in total. Failures 1..`max_retries` are
  journaled as `attempt` entries; the final failure is not (the execution's head records it as its
  error). A manual resume after retries were exhausted therefore resets nothing: it makes exactly
  one more try, and fails again at once if the fault persists.
- **Back-off.** `retry_delay * 2**(n-1)` after the n-th failure (or a constant `retry_delay`),
  multiplied by a random factor in `[1 - jitter, 1 + jitter]` (symmetric proportional jitter,
  spreading the retries of many workers without ever waiting less than `(1 - jitter)` of the
  schedule), then capped by `max_delay`.
- **Retry-After.** When the error carries a provider's wait hint (`retry-after-ms` or `Retry-After`
  header as seconds or an HTTP date, on a pydantic-ai `ModelHTTPError`, an `openai.APIStatusError`
  or an httpx `HTTPStatusError` anywhere in the exception chain, or pydantic-ai's parsed
  `retry_after`), the delay is at least that long, still capped by `max_delay` so a hostile or
  broken header cannot park an execution for hours.
- **Classification.** `is_transient` says whether trying again may help: timeouts, connection
  errors and HTTP 408/409/425/429/5xx are transient; other 4xx, validation errors, exhausted quota,
  usage limits, pydantic-ai's `UserError` and every `PerdureError` are permanent and fail the unit
  at once (the execution is then stored as `failed` with that error; its journal stays intact, so
  a resume after fixing the cause does not repeat finished work).
- **Circuit breaker.** Consulted before every try; an open breaker raises `CircuitOpenError`
  without calling the provider. Transient failures count towards opening it; any answer from the
  provider (a success or a permanent error such as HTTP 400) proves it is reachable and closes it.

Provider SDKs retry on their own (the `openai` SDK twice by default), invisibly to the journal and
multiplying perdure's retries. `openai_chat_model` builds a model whose SDK client never retries,
so every HTTP attempt is a journaled perdure attempt.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, TypeVar

from pydantic import ValidationError
from pydantic_ai.exceptions import (
    ApprovalRequired,
    CallDeferred,
    ModelConnectionError,
    ModelHTTPError,
    ModelQuotaExceededError,
    ModelRateLimitError,
    ModelRequestRejectedError,
    ModelRequestTimeout,
    ModelRetry,
    ModelServerError,
    ModelUnavailableError,
    RetryModelRequest,
    RunCancelled,
    SkipModelRequest,
    SkipToolExecution,
    SkipToolValidation,
    ToolFailed,
    ToolRetryError,
    UsageLimitExceeded,
)
from pydantic_ai.exceptions import UserError as PydanticAIUserError

from ..errors import CircuitOpenError, PerdureError, UserError

if TYPE_CHECKING:
    from pydantic_ai.models.openai import OpenAIChatModel

__all__ = [
    "TRANSIENT_STATUS_CODES",
    "CircuitBreaker",
    "CircuitState",
    "RetryPolicy",
    "call_with_retry",
    "circuit_breaker_for",
    "circuit_stats",
    "is_transient",
    "openai_chat_model",
    "reset_circuit_breakers",
    "retry_after_seconds",
]

logger = logging.getLogger("perdure")

T = TypeVar("T")

TRANSIENT_STATUS_CODES: frozenset[int] = frozenset({408, 409, 425, 429})
"""4xx statuses worth retrying (timeout, conflict, too early, rate limit); every 5xx is too."""

_NEVER_RETRIED: tuple[type[BaseException], ...] = (
    PerdureError,
    PydanticAIUserError,
    UsageLimitExceeded,
    RunCancelled,
    ModelRetry,
    ToolFailed,
    ToolRetryError,
    CallDeferred,
    ApprovalRequired,
    SkipModelRequest,
    RetryModelRequest,
    SkipToolValidation,
    SkipToolExecution,
)
"""Never retried, whatever the policy: perdure's own decisions (open circuit, lost lease, journal
mismatch), misuse, usage limits, a cancelled or timed-out run (`RunTimedOut` is also a
`TimeoutError`), and pydantic-ai's control-flow signals (`ModelRetry` is for the *model* to retry
with feedback, not for perdure to repeat the call)."""

_MAX_EXPONENT = 64  # 2**64 * any sane retry_delay is far beyond any max_delay; avoids float overflow


# ---- classification ----------------------------------------------------------------------------


@functools.cache
def _sdk_transient_types() -> tuple[type[BaseException], ...]:
    """Transport error types of the HTTP stacks pydantic-ai's providers use, when installed.

    Imported lazily: `perdure` must not pay for importing `openai` and `httpx` when a run never
    touches them, and either may be missing in a slim install.
    """
    types: list[type[BaseException]] = []
    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        types.extend((module.TimeoutException, module.TransportError))
    try:
        import openai
    except ImportError:  # pragma: no cover - openai is a dependency of pydantic-ai-slim[openai]
        pass
    else:
        types.append(openai.APIConnectionError)  # includes APITimeoutError
    return tuple(types)


def _status_code(exc: BaseException) -> int | None:
    """The HTTP status an error reports: pydantic-ai, openai-style SDKs, or an httpx status error."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return status
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return status
    return None


def _transient_status(status: int) -> bool:
    return status in TRANSIENT_STATUS_CODES or 500 <= status <= 599


def is_transient(exc: BaseException) -> bool:
    """Whether trying `exc`'s operation again may succeed without changing anything.

    Transient: timeouts (`TimeoutError`, httpx `TimeoutException`, `openai.APITimeoutError`,
    pydantic-ai `ModelTimeoutError`/`ModelRequestTimeout`), connection errors (`ConnectionError`,
    httpx `TransportError`, `openai.APIConnectionError`, `ModelConnectionError`) and HTTP
    408/409/425/429/5xx from any SDK that reports a `status_code`.

    Permanent: every `PerdureError` (perdure's own decisions: open circuit, lease lost, journal
    mismatch, ...), pydantic-ai's `UserError`, `UsageLimitExceeded`, `RunCancelled`/`RunTimedOut`
    and control-flow signals (`ModelRetry`, `ToolFailed`, `ApprovalRequired`, ...), exhausted
    quota (a 429 whose provider code says the quota is gone: waiting does not help), other 4xx
    (bad request, authentication, not found, context window), validation errors and anything not
    listed above.
    Only the exception itself is classified, not its `__cause__`: wrappers such as pydantic-ai's
    model errors already carry the category of what they wrap.
    """
    if isinstance(exc, (*_NEVER_RETRIED, ValidationError)):
        return False
    if isinstance(exc, ModelQuotaExceededError | ModelRequestRejectedError):
        return False
    status = _status_code(exc)
    if status is not None and status >= 400:
        return _transient_status(status)
    if isinstance(
        exc,
        ModelConnectionError
        | ModelRequestTimeout
        | ModelRateLimitError
        | ModelUnavailableError
        | ModelServerError
        | TimeoutError
        | ConnectionError,
    ):
        return True
    return isinstance(exc, _sdk_transient_types())


# ---- Retry-After ---------------------------------------------------------------------------------


def _chain(exc: BaseException, limit: int = 6) -> Iterator[BaseException]:
    """`exc`, then its causes/contexts: SDK errors usually sit under the pydantic-ai wrapper."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < limit:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _header(headers: Any, name: str) -> str | None:
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    for key in (name, name.title()):
        value = getter(key)
        if isinstance(value, str):
            return value
    return None


def _seconds(value: float) -> float | None:
    return value if math.isfinite(value) and value >= 0 else None


def _parse_retry_after(headers: Any) -> float | None:
    raw_ms = _header(headers, "retry-after-ms")
    if raw_ms is not None:
        try:
            ms = _seconds(float(raw_ms))
        except ValueError:
            ms = None
        if ms is not None:
            return ms / 1000.0
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    try:
        return _seconds(float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime dates carry no zone; HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def retry_after_seconds(exc: BaseException | None) -> float | None:
    """Seconds the provider asked to wait before retrying, if `exc` (or what it wraps) says.

    Reads `retry-after-ms`, then `Retry-After` (seconds, fractional allowed, or an HTTP date) from the
    response headers of a pydantic-ai `ModelHTTPError`, an `openai.APIStatusError` or an httpx
    `HTTPStatusError`, then pydantic-ai's already parsed `retry_after`.
    """
    if exc is None:
        return None
    for err in _chain(exc):
        headers = err.headers if isinstance(err, ModelHTTPError) else None
        if headers is None:
            headers = getattr(getattr(err, "response", None), "headers", None)
        if headers is not None:
            parsed = _parse_retry_after(headers)
            if parsed is not None:
                return parsed
        hint = getattr(err, "retry_after", None)
        if isinstance(hint, int | float) and not isinstance(hint, bool) and _seconds(float(hint)) is not None:
            return float(hint)
    return None


# ---- policy ------------------------------------------------------------------------------------


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    """A finite int or float; bools are refused because `True` seconds is always a mistake."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(name: str, value: object) -> float:
    if not _is_number(value):
        raise UserError(f"RetryPolicy({name}=...) must be a finite number, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a failing unit; attempts are journaled, so durable.

    Args:
        max_retries: Retries after the first try, counted over the execution's whole life (a crash
            or a resume does not reset it). 0 disables retries but keeps the classification.
        retry_delay: Seconds to wait after the first failure.
        exponential_backoff: Double the wait after each further failure (else wait `retry_delay`).
        max_delay: Upper bound of any wait, including one a `Retry-After` header asks for.
        jitter: Fraction of random spread: each wait is multiplied by a factor drawn uniformly from
            `[1 - jitter, 1 + jitter]` so that many workers hit by the same outage do not retry in
            lock-step. 0 gives exact, deterministic delays.
        retry_on_errors: When given, retry exactly the errors that are instances of one of these
            types (checked on the error and the errors it wraps, so `openai.RateLimitError` matches
            pydantic-ai's wrapper of it) instead of the transient ones; use it e.g. for a tool's own
            "try again" exception. `PerdureError`s, pydantic-ai's control-flow signals (`ModelRetry`,
            `ApprovalRequired`, ...), usage limits and cancelled runs are never retried.

    """

    max_retries: int = 3
    retry_delay: float = 1.0
    exponential_backoff: bool = True
    max_delay: float = 60.0
    jitter: float = 0.1
    retry_on_errors: tuple[type[BaseException], ...] | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.max_retries) or self.max_retries < 0:
            raise UserError(f"RetryPolicy(max_retries=...) must be an int >= 0, got {self.max_retries!r}.")
        if _number("retry_delay", self.retry_delay) < 0:
            raise UserError(f"RetryPolicy(retry_delay=...) must be >= 0 seconds, got {self.retry_delay!r}.")
        if _number("max_delay", self.max_delay) < self.retry_delay:
            raise UserError(
                f"RetryPolicy(max_delay={self.max_delay!r}) must be >= retry_delay={self.retry_delay!r}: "
                f"the cap would shorten even the first wait."
            )
        if not 0.0 <= _number("jitter", self.jitter) <= 1.0:
            raise UserError(
                f"RetryPolicy(jitter=...) is a fraction of the delay between 0 and 1, got {self.jitter!r}."
            )
        if not isinstance(self.exponential_backoff, bool):
            raise UserError(
                f"RetryPolicy(exponential_backoff=...) must be a bool, got {self.exponential_backoff!r}."
            )
        if self.retry_on_errors is not None:
            types = (
                tuple(self.retry_on_errors)
                if isinstance(self.retry_on_errors, list | tuple | set | frozenset)
                else (self.retry_on_errors,)
            )
            bad = [t for t in types if not (isinstance(t, type) and issubclass(t, BaseException))]
            if bad or not types:
                raise UserError(
                    f"RetryPolicy(retry_on_errors=...) must be a non-empty tuple of exception classes, "
                    f"got {self.retry_on_errors!r}."
                )
            never = [t.__name__ for t in types if issubclass(t, _NEVER_RETRIED)]
            if never:
                raise UserError(
                    f"RetryPolicy(retry_on_errors=...) lists {never}, which are never retried: perdure's "
                    f"own errors are decisions (open circuit, lost lease, journal mismatch, ...), and "
                    f"pydantic-ai's control-flow signals (ModelRetry, ApprovalRequired, ...) and usage "
                    f"limits are handled by the agent run itself."
                )
            object.__setattr__(self, "retry_on_errors", types)

    def should_retry(self, exc: BaseException) -> bool:
        """Whether `exc` is worth another try under this policy (ignoring how many are left)."""
        if isinstance(exc, _NEVER_RETRIED) or not isinstance(exc, Exception):
            return False
        if self.retry_on_errors is None:
            return is_transient(exc)
        return any(isinstance(err, self.retry_on_errors) for err in _chain(exc))

    def delay_for(self, failed_attempts: int, error: BaseException | None = None) -> float:
        """Seconds to wait after the `failed_attempts`-th failure (1 for the first).

        Back-off with jitter, at least what the error's `Retry-After` asks, at most `max_delay`.
        """
        n = max(1, failed_attempts)
        delay = self.retry_delay
        if self.exponential_backoff:
            delay *= 2.0 ** min(n - 1, _MAX_EXPONENT)
        if self.jitter:
            delay *= random.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        hint = retry_after_seconds(error)
        if hint is not None:
            delay = max(delay, hint)
        return min(delay, self.max_delay)


# ---- circuit breaker ---------------------------------------------------------------------------

CircuitState = Literal["closed", "open", "half_open"]

_ALL_BREAKERS: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
_REGISTRY: dict[str, CircuitBreaker] = {}
_REGISTRY_LOCK = threading.Lock()
_SERIAL = itertools.count(1)


class CircuitBreaker:
    """Fails fast while a model's provider is down, instead of every execution paying its timeouts.

    closed -> open after `failure_threshold` consecutive transient failures; while open, every call
    raises `CircuitOpenError` at once; after `reset_timeout` seconds the breaker is half-open and lets
    exactly one probe call through (concurrent callers still fail fast): its success closes the
    breaker, its failure opens it for another `reset_timeout`. Share one instance between everything
    that talks to the same model (or use `circuit_breaker_for`). Safe to use from threads and tasks:
    state changes happen under a lock and never await.

    Args:
        failure_threshold: Consecutive transient failures that open the breaker.
        reset_timeout: Seconds the breaker stays open before it lets one probe through.
        name: The model name shown in errors and `circuit_stats()`.
        clock: Monotonic clock (seconds); tests pass a fake one.

    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        name: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not _is_int(failure_threshold) or failure_threshold < 1:
            raise UserError(
                f"CircuitBreaker(failure_threshold=...) must be an int >= 1, got {failure_threshold!r}."
            )
        if not _is_number(reset_timeout) or reset_timeout < 0:
            raise UserError(f"CircuitBreaker(reset_timeout=...) must be >= 0 seconds, got {reset_timeout!r}.")
        self.failure_threshold = failure_threshold
        self.reset_timeout = float(reset_timeout)
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._state: CircuitState = "closed"
        self._consecutive = 0
        self._opened_mono: float | None = None
        self._opened_wall: float | None = None
        self._probe_in_flight = False
        self._total_failures = 0
        self._total_successes = 0
        self._rejected = 0
        self._serial = next(_SERIAL)
        _ALL_BREAKERS.add(self)

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(name={self.name!r}, state={self.state!r}, "
            f"failure_threshold={self.failure_threshold}, reset_timeout={self.reset_timeout})"
        )

    @property
    def state(self) -> CircuitState:
        """`closed`, `open`, or `half_open` (open long enough that the next call may probe)."""
        with self._lock:
            return self._current_state()

    def _current_state(self) -> CircuitState:
        if self._state == "open" and self._retry_in() <= 0:
            return "half_open"
        return self._state

    def _retry_in(self) -> float:
        if self._opened_mono is None:
            return 0.0
        return max(0.0, self._opened_mono + self.reset_timeout - self._clock())

    def before_call(self, *, execution_id: str | None = None, model: str | None = None) -> bool:
        """Let a call through or raise `CircuitOpenError`; returns whether the call is the probe.

        A caller that was let through must report its outcome with `record_success`,
        `record_failure` or (cancelled, no verdict) `release`.
        """
        with self._lock:
            state = self._current_state()
            if state == "closed":
                return False
            if state == "half_open" and not self._probe_in_flight:
                self._state = "half_open"
                self._probe_in_flight = True
                return True
            self._rejected += 1
            retry_in = self._retry_in() if state == "open" else self.reset_timeout
        raise CircuitOpenError(self.name or model or "?", retry_in, execution_id=execution_id)

    def record_success(self) -> None:
        """The provider answered: close the breaker (a half-open probe succeeded) and reset the count."""
        with self._lock:
            self._total_successes += 1
            if self._state == "open":  # a call started before the breaker opened; the probe decides
                return
            self._state = "closed"
            self._consecutive = 0
            self._probe_in_flight = False
            self._opened_mono = self._opened_wall = None

    def record_failure(self) -> None:
        """A transient failure: count it; open the breaker at the threshold or when the probe failed."""
        with self._lock:
            self._total_failures += 1
            if self._state == "open":
                return
            self._consecutive += 1
            if self._state == "half_open" or self._consecutive >= self.failure_threshold:
                self._state = "open"
                self._probe_in_flight = False
                self._opened_mono = self._clock()
                self._opened_wall = time.time()

    def release(self) -> None:
        """A call let through ended without a verdict (cancelled): free the probe slot."""
        with self._lock:
            self._probe_in_flight = False

    def reset(self) -> None:
        """Close the breaker and forget its counters (operators, tests)."""
        with self._lock:
            self._state = "closed"
            self._consecutive = 0
            self._probe_in_flight = False
            self._opened_mono = self._opened_wall = None
            self._total_failures = self._total_successes = self._rejected = 0

    def stats(self) -> dict[str, Any]:
        """State and counters: `state`, `consecutive_failures`, `opened_at` (epoch seconds or None),
        `total_failures`, `total_successes`, `rejected`, plus `retry_in` and the configuration.
        """  # noqa: D205 - the field list is the summary
        with self._lock:
            state = self._current_state()
            return {
                "state": state,
                "consecutive_failures": self._consecutive,
                "opened_at": self._opened_wall,
                "total_failures": self._total_failures,
                "total_successes": self._total_successes,
                "rejected": self._rejected,
                "retry_in": self._retry_in() if state == "open" else 0.0,
                "failure_threshold": self.failure_threshold,
                "reset_timeout": self.reset_timeout,
            }


def circuit_breaker_for(
    model_name: str, *, failure_threshold: int = 5, reset_timeout: float = 30.0
) -> CircuitBreaker:
    """The process-wide breaker of `model_name`, created with these settings on first use.

    Every agent that asks for the same model name shares one breaker, so one provider outage opens
    it for all of them. Later calls return the existing breaker unchanged (first settings win).
    """
    if not isinstance(model_name, str) or not model_name:
        raise UserError(f"circuit_breaker_for(model_name) needs a non-empty model name, got {model_name!r}.")
    with _REGISTRY_LOCK:
        breaker = _REGISTRY.get(model_name)
        if breaker is None:
            breaker = CircuitBreaker(failure_threshold, reset_timeout, name=model_name)
            _REGISTRY[model_name] = breaker
        return breaker


def circuit_stats() -> dict[str, dict[str, Any]]:
    """`{model name: breaker.stats()}` of every live breaker in this process, storage-independent.

    Includes the `circuit_breaker_for` registry and any other breaker still referenced; an unnamed
    breaker is listed as `breaker-<n>`, and a second breaker with a name already listed as
    `<name>#<n>`.
    """
    with _REGISTRY_LOCK:
        registered = dict(_REGISTRY)
    result: dict[str, dict[str, Any]] = {name: b.stats() for name, b in registered.items()}
    listed = {id(b) for b in registered.values()}
    for breaker in sorted(_ALL_BREAKERS, key=lambda b: b._serial):
        if id(breaker) in listed:
            continue
        key = breaker.name or f"breaker-{breaker._serial}"
        if key in result:
            key = f"{key}#{breaker._serial}"
        result[key] = breaker.stats()
    return result


def reset_circuit_breakers() -> None:
    """Forget the `circuit_breaker_for` registry (tests, or after reconfiguring models)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()


# ---- the retry loop ------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


async def call_with_retry(
    body: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy | None,
    breaker: CircuitBreaker | None,
    failed_attempts: int,
    record_failure: Callable[[int, BaseException, float], Awaitable[None]],
    execution_id: str,
    unit_name: str,
) -> T:
    """Run `body`, retrying transient failures under `policy`, guarded by `breaker`.

    Before each try the breaker is consulted: when open, `CircuitOpenError` is raised without calling
    `body`. A failure that the policy retries and that leaves retries is journaled through
    `record_failure` *before* the back-off sleep, so a crash while waiting does not lose the count.
    The count starts at `failed_attempts` (journaled by earlier processes), so `max_retries` bounds
    the retries of the unit across crashes and resumes. The last failure is raised unjournaled.

    Args:
        body: The unit's work.
        policy: Retry policy of the unit, None for no retries.
        breaker: Circuit breaker of the unit's model, None for none.
        failed_attempts: Failed attempts of this unit already journaled (by earlier processes).
        record_failure: Journals a failed attempt as `(attempt_number, error, delay)` before sleeping.
        execution_id: For error messages and logs.
        unit_name: For error messages and logs.

    Raises:
        CircuitOpenError: The breaker is open (before a try, or it opened on this unit's failure).
        BaseException: The unit's own error when it is permanent or retries are exhausted.

    """
    failures = failed_attempts
    while True:
        if breaker is not None:
            breaker.before_call(execution_id=execution_id, model=unit_name)
        try:
            result = await body()
        except Exception as exc:
            if breaker is not None:
                if is_transient(exc):
                    breaker.record_failure()
                elif _status_code(exc) is not None:  # the provider answered (e.g. HTTP 400): reachable
                    breaker.record_success()
                else:  # not the provider's doing (a bug, a control-flow signal): no verdict
                    breaker.release()
            retryable = policy is not None and policy.should_retry(exc)
            if policy is None or not retryable or failures >= policy.max_retries:
                if retryable and policy is not None:
                    logger.info(
                        "[%s] %s failed on attempt %d (%s); retries exhausted (max_retries=%d)",
                        execution_id,
                        unit_name,
                        failures + 1,
                        _describe(exc),
                        policy.max_retries,
                        extra={"perdure_execution_id": execution_id, "perdure_unit": unit_name},
                    )
                raise
            failures += 1
            delay = policy.delay_for(failures, exc)
            await record_failure(failures, exc, delay)
            logger.info(
                "[%s] %s attempt %d/%d failed (%s); journaled, retrying in %.3fs",
                execution_id,
                unit_name,
                failures,
                policy.max_retries + 1,
                _describe(exc),
                delay,
                extra={
                    "perdure_execution_id": execution_id,
                    "perdure_unit": unit_name,
                    "perdure_attempt": failures,
                    "perdure_delay": delay,
                },
            )
            if breaker is not None and breaker.state == "open":
                # Waiting out the back-off cannot help: the next try would be refused anyway.
                retry_in = breaker.stats()["retry_in"]
                raise CircuitOpenError(
                    breaker.name or unit_name, retry_in, execution_id=execution_id
                ) from exc
            await asyncio.sleep(delay)
            continue
        except BaseException:  # cancelled: no verdict on the provider
            if breaker is not None:
                breaker.release()
            raise
        if breaker is not None:
            breaker.record_success()
        return result


# ---- provider models without hidden SDK retries ------------------------------------------------


def openai_chat_model(
    model_name: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float | None = None,
    default_headers: Mapping[str, str] | None = None,
) -> OpenAIChatModel:
    """A pydantic-ai `OpenAIChatModel` whose `openai` client never retries on its own.

    The `openai` SDK retries failed requests twice by default. Under a durable `RetryPolicy` those
    retries would stack invisibly (3 HTTP attempts per journaled attempt) and slip past the journal,
    the attempt count and the circuit breaker. With `max_retries=0` every HTTP attempt is one
    perdure attempt, journaled and bounded by the policy.

    Args:
        model_name: The model, e.g. `"gpt-4o-mini"` or a local server's model name.
        base_url: The API base URL ending in `/v1`; `OPENAI_BASE_URL` or OpenAI's when None.
        api_key: The API key; `OPENAI_API_KEY` when None.
        timeout: Seconds per HTTP attempt; the SDK's default (10 minutes) when None.
        default_headers: Extra headers sent with every request.

    """
    from openai import NOT_GIVEN, AsyncOpenAI
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    if timeout is not None and not (_is_number(timeout) and timeout > 0):
        raise UserError(f"openai_chat_model(timeout=...) must be > 0 seconds or None, got {timeout!r}.")
    client = AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=0,
        timeout=float(timeout) if timeout is not None else NOT_GIVEN,
        default_headers=dict(default_headers) if default_headers else None,
    )
    return OpenAIChatModel(model_name, provider=OpenAIProvider(openai_client=client))
