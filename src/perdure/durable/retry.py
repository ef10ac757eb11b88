"""Durable retries of model requests and tool calls.

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
- **Retry-After.** When the error carries a provider's wait hint, the delay is at least that long,
  still capped by `max_delay` so a hostile or broken header cannot park an execution for hours
  (parsing: `perdure.durable.transient.retry_after_seconds`).
- **Classification.** Without `retry_on_errors`, exactly the errors `is_transient` accepts are
  retried (`perdure.durable.transient`); permanent ones fail the unit at once.
- **Circuit breaker.** Consulted before every try (`perdure.durable.circuit`); an open breaker
  raises `CircuitOpenError` without calling the provider.

Provider SDKs retry on their own; `perdure.models.openai.openai_chat_model` builds an OpenAI model
whose SDK client never retries, so every HTTP attempt is a journaled perdure attempt.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .._checks import is_int, is_number
from ..errors import CircuitOpenError, UserError
from .circuit import CircuitBreaker
from .transient import NEVER_RETRIED, error_chain, is_transient, retry_after_seconds, status_code

__all__ = ["RetryPolicy", "call_with_retry"]

logger = logging.getLogger("perdure")

T = TypeVar("T")

_MAX_EXPONENT = 64  # 2**64 * any sane retry_delay is far beyond any max_delay; avoids float overflow


def _number(name: str, value: object) -> float:
    if not is_number(value):
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
        if not is_int(self.max_retries) or self.max_retries < 0:
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
            never = [t.__name__ for t in types if issubclass(t, NEVER_RETRIED)]
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
        if isinstance(exc, NEVER_RETRIED) or not isinstance(exc, Exception):
            return False
        if self.retry_on_errors is None:
            return is_transient(exc)
        return any(isinstance(err, self.retry_on_errors) for err in error_chain(exc))

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
                elif status_code(exc) is not None:  # the provider answered (e.g. HTTP 400): reachable
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
