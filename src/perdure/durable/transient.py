"""Transient or permanent: whether trying a failed operation again may help, and how long to wait.

- **Classification.** `is_transient` says whether trying again may help: timeouts, connection
  errors and HTTP 408/409/425/429/5xx are transient; other 4xx, validation errors, exhausted quota,
  usage limits, pydantic-ai's `UserError` and every `PerdureError` are permanent and fail the unit
  at once (the execution is then stored as `failed` with that error; its journal stays intact, so
  a resume after fixing the cause does not repeat finished work). `NEVER_RETRIED` lists what no
  retry policy may retry.
- **Retry-After.** `retry_after_seconds` reads a provider's wait hint (`retry-after-ms` or
  `Retry-After` header as seconds or an HTTP date, on a pydantic-ai `ModelHTTPError`, an
  `openai.APIStatusError` or an httpx `HTTPStatusError` anywhere in the exception chain, or
  pydantic-ai's parsed `retry_after`); `RetryPolicy` waits at least that long, capped by its
  `max_delay`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

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

from ..errors import PerdureError

__all__ = [
    "NEVER_RETRIED",
    "TRANSIENT_STATUS_CODES",
    "error_chain",
    "is_transient",
    "retry_after_seconds",
    "status_code",
]

TRANSIENT_STATUS_CODES: frozenset[int] = frozenset({408, 409, 425, 429})
"""4xx statuses worth retrying (timeout, conflict, too early, rate limit); every 5xx is too."""

NEVER_RETRIED: tuple[type[BaseException], ...] = (
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


def status_code(exc: BaseException) -> int | None:
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
    if isinstance(exc, (*NEVER_RETRIED, ValidationError)):
        return False
    if isinstance(exc, ModelQuotaExceededError | ModelRequestRejectedError):
        return False
    status = status_code(exc)
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


def error_chain(exc: BaseException, limit: int = 6) -> Iterator[BaseException]:
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
    for err in error_chain(exc):
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
