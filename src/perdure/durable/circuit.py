"""Circuit breaking: fail fast while a model's provider is down.

A breaker is consulted before every try of a unit (see `perdure.durable.retry.call_with_retry`);
an open breaker raises `CircuitOpenError` without calling the provider. Transient failures count
towards opening it; any answer from the provider (a success or a permanent error such as HTTP 400)
proves it is reachable and closes it. Breakers live in the process, not in the storage:
`circuit_breaker_for` shares one per model name, `circuit_stats` lists them.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Literal

from .._checks import is_int, is_number
from ..errors import CircuitOpenError, UserError

__all__ = [
    "CircuitBreaker",
    "CircuitState",
    "circuit_breaker_for",
    "circuit_stats",
    "reset_circuit_breakers",
]

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
        if not is_int(failure_threshold) or failure_threshold < 1:
            raise UserError(
                f"CircuitBreaker(failure_threshold=...) must be an int >= 1, got {failure_threshold!r}."
            )
        if not is_number(reset_timeout) or reset_timeout < 0:
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
