"""Alerts: tell someone when too many executions reach a status within a time window.

The seed's `monitor_executions` loop ("alert when failed >= 5"), made precise. An `AlertRule`
names a status, a threshold and a window (`AlertRule("failed", threshold=5,
window=timedelta(minutes=10), notify=...)`); `notify` is a callable (sync or async) that receives
the `Alert`, or an http(s) URL that receives the alert as a JSON POST (a webhook; with a timeout
and retries with backoff). Rules are evaluated by `Worker(..., alerts=[...])` at each of its polls,
by `monitor(storage, rules)` (or `perdure monitor`), or by hand with `AlertEvaluator`.

Window semantics (per rule, per evaluator):

- An evaluation at time `now` counts the executions whose head has the rule's status and whose
  `updated_at` lies in the window `(now - window, now]`. Heads are read newest first from the
  storage's `(status, updated_at)` index (`list_executions_async(status, limit)`), in pages that grow
  geometrically until one reaches past the window start, so an evaluation costs a few rows when the
  window holds few matches, however many older ones the store holds. The count is exact up to
  `MAX_SCAN` heads; beyond, the alert says so (`count_is_lower_bound`).
- The rule fires when the count reaches `threshold`. After firing at time `t` it stays silent until
  `t + window`: one alert per window, not one per poll while the count stays above the threshold.
- From `t + window` on, the window no longer holds any execution the previous alert counted (they
  were updated at or before `t`), so the rule fires again only when `threshold` *new* executions
  reach the status within one window. A failure storm that goes on yields one alert per window; one
  that stopped yields nothing more.

The state (when each rule last fired) lives in the evaluator's memory: each worker or monitor
evaluates on its own, so N workers with the same rules send up to N alerts per window. Give the
rules to one process (a `perdure monitor`, or one worker) to get one.

A failing notification (an exception in a callable, a webhook that keeps failing or hangs) is
logged and never stops the worker or the monitor. Webhook URLs often carry their secret (a
password, a token in the path or query, e.g. a Slack hook), so logs and `repr`s show only the URL's
scheme and host.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from ._redact import redact
from ._sync import run_sync, sync_twin
from .errors import UserError
from .records import ExecutionStatus, utcnow
from .storage.base import DurableExecutionStorage

__all__ = [
    "MAX_IDS",
    "MAX_SCAN",
    "Alert",
    "AlertEvaluator",
    "AlertRule",
    "WebhookError",
    "monitor",
    "monitor_sync",
    "notify_async",
    "parse_duration",
]

logger = logging.getLogger("perdure.alerts")

MAX_IDS = 20
"""Execution ids an `Alert` lists (the newest ones)."""

MAX_SCAN = 10_000
"""Heads one evaluation of one rule reads at most; a larger count is reported as a lower bound."""

_FIRST_PAGE = 32

Notify = Callable[["Alert"], Any]
"""A notification callable: takes the `Alert`; may return an awaitable (async callables)."""


class WebhookError(Exception):
    """A webhook POST failed for good (after its retries); the message names no credential."""


def _webhook_label(url: str) -> str:
    """`scheme://host[:port]/…` of a webhook URL: its path, query and user info may be secrets."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    rest = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _duration(seconds: float) -> str:
    """`10m`, `1h30m`, `45s`, `2.5s`: a window as people write it."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest, text = int(seconds), ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            text += f"{rest // size}{unit}"
            rest %= size
    return text or "0s"


_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> timedelta:
    """`"10m"`, `"30s"`, `"2h"`, `"1d"`, `"500ms"` or plain seconds (`"90"`) as a timedelta."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise UserError(f"Invalid duration {text!r}: write a number with a unit, e.g. 30s, 10m, 2h or 1d.")
    return timedelta(seconds=float(match["value"]) * _UNITS[match["unit"]])


class AlertRule:
    """Fire when `threshold` executions reach `status` within `window` (see the module docstring).

    Args:
        status: The status to watch, an `ExecutionStatus` or its value (`"failed"`, ...).
        threshold: How many executions in one window fire the rule (>= 1).
        window: The window, a `timedelta` or seconds (> 0); also the rule's silence after it fires.
        notify: A callable receiving the `Alert` (sync or async), an http(s) URL that receives it as
            a JSON POST (`Alert.to_dict()`), or None to only log it (every alert is logged at
            WARNING anyway).
        name: How logs and the alert name the rule (default e.g. `failed>=5/10m`).
        timeout: Seconds one webhook POST may take in all (connect, send, answer).
        retries: Further POSTs after a failed one (connection error, timeout, HTTP 408, 429, 5xx);
            other answers (4xx, redirects) are not retried.
        backoff: Seconds before the first retry, doubled before each next one.
        headers: Extra HTTP headers of the webhook POST (e.g. `Authorization`); never logged.

    Raises:
        UserError: On an unknown status, a threshold < 1, a window <= 0, a `notify` that is neither
            callable nor an http(s) URL, or a negative timeout, retries or backoff.

    """

    __slots__ = (
        "backoff",
        "headers",
        "name",
        "notify",
        "retries",
        "status",
        "threshold",
        "timeout",
        "window",
    )

    def __init__(
        self,
        status: ExecutionStatus | str,
        threshold: int = 5,
        window: timedelta | float = timedelta(minutes=10),
        notify: Notify | str | None = None,
        *,
        name: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        try:
            self.status = ExecutionStatus(status)
        except ValueError:
            known = ", ".join(s.value for s in ExecutionStatus)
            raise UserError(f"AlertRule status {status!r} is not a status; use one of {known}.") from None
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise UserError(f"AlertRule threshold must be an integer >= 1, got {threshold!r}.")
        self.threshold = threshold
        if isinstance(window, int | float) and not isinstance(window, bool):
            window = timedelta(seconds=window)
        if not isinstance(window, timedelta) or window <= timedelta(0):
            raise UserError(f"AlertRule window must be a timedelta (or seconds) > 0, got {window!r}.")
        self.window = window
        _check_notify(notify)
        self.notify = notify
        if not _number(timeout) or not timeout > 0:
            raise UserError(f"AlertRule timeout must be a number of seconds > 0, got {timeout!r}.")
        if not _number(backoff) or backoff < 0:
            raise UserError(f"AlertRule backoff must be a number of seconds >= 0, got {backoff!r}.")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise UserError(f"AlertRule retries must be an integer >= 0, got {retries!r}.")
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.headers = dict(headers or {})
        self.name = name or f"{self.status.value}>={threshold}/{_duration(window.total_seconds())}"

    @classmethod
    def parse(cls, spec: str, notify: Notify | str | None = None, **options: Any) -> AlertRule:
        """A rule from `STATUS[:THRESHOLD[:WINDOW]]`, e.g. `failed:5:10m` (what `--alert` takes).

        The window takes a unit (`ms`, `s`, `m`, `h`, `d`; none means seconds); omitted parts keep
        their defaults (5 in 10 minutes). `notify` and `options` are passed to the rule.
        """
        parts = [part.strip() for part in spec.split(":")]
        if not 1 <= len(parts) <= 3 or not parts[0]:
            raise UserError(f"Invalid alert {spec!r}: write STATUS[:THRESHOLD[:WINDOW]], e.g. failed:5:10m.")
        kwargs: dict[str, Any] = dict(options)
        if len(parts) > 1:
            if not parts[1].isdigit():
                raise UserError(f"Invalid alert {spec!r}: the threshold {parts[1]!r} is not a whole number.")
            kwargs["threshold"] = int(parts[1])
        if len(parts) > 2:
            kwargs["window"] = parse_duration(parts[2])
        return cls(parts[0], notify=notify, **kwargs)

    def __repr__(self) -> str:
        return (
            f"AlertRule(status={self.status.value!r}, threshold={self.threshold}, "
            f"window={_duration(self.window.total_seconds())}, notify={_notify_label(self.notify)})"
        )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_notify(notify: object) -> None:
    if notify is None or (callable(notify) and not isinstance(notify, str)):
        return
    if isinstance(notify, str):
        parts = urlsplit(notify.strip())
        if parts.scheme.lower() in ("http", "https") and parts.hostname:
            return
        raise UserError(
            f"AlertRule notify {_webhook_label(notify)!r} is not an http(s) URL; pass a webhook URL such "
            f"as https://hooks.example.com/..., a callable taking the Alert, or None to only log."
        )
    raise UserError(
        f"AlertRule notify must be a callable, an http(s) URL or None, got {type(notify).__name__}."
    )


def _notify_label(notify: object) -> str:
    if notify is None:
        return "log"
    if isinstance(notify, str):
        return _webhook_label(notify)
    return getattr(notify, "__qualname__", None) or type(notify).__name__


@dataclass(frozen=True)
class Alert:
    """What fired: the rule, the count in the window and the newest ids; `to_dict()` is the webhook body.

    Attributes:
        rule: The rule that fired.
        count: Executions with the rule's status updated in the window (see `count_is_lower_bound`).
        window_start: Start of the window (exclusive), UTC.
        window_end: End of the window (inclusive): the evaluation time, UTC.
        execution_ids: The newest of them, newest first, at most `MAX_IDS`.
        fired_at: When the alert was raised (the evaluation time), UTC.
        count_is_lower_bound: True when the window holds more than `MAX_SCAN` executions: `count`
            is then `MAX_SCAN`.
        backend: The storage backend's name (`sqlite`, `redis`, ...).

    """

    rule: AlertRule
    count: int
    window_start: datetime
    window_end: datetime
    execution_ids: tuple[str, ...]
    fired_at: datetime
    count_is_lower_bound: bool = False
    backend: str = ""

    @property
    def text(self) -> str:
        """One line for people (also the `text` of the webhook body, which Slack-style hooks show)."""
        more = "+" if self.count_is_lower_bound else ""
        noun = "execution" if self.count == 1 and not more else "executions"
        ids = ", ".join(self.execution_ids[:5]) + (", ..." if self.count > 5 else "")
        return (
            f"perdure alert {self.rule.name}: {self.count}{more} {noun} {self.rule.status.value} in the "
            f"last {_duration(self.rule.window.total_seconds())} (threshold {self.rule.threshold}): {ids}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The alert as JSON-ready data: the body of a webhook POST."""
        return {
            "text": self.text,
            "rule": {
                "name": self.rule.name,
                "status": self.rule.status.value,
                "threshold": self.rule.threshold,
                "window_seconds": self.rule.window.total_seconds(),
            },
            "count": self.count,
            "count_is_lower_bound": self.count_is_lower_bound,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "execution_ids": list(self.execution_ids),
            "fired_at": self.fired_at.isoformat(),
            "backend": self.backend,
        }


# ---- counting ---------------------------------------------------------------------------------------


async def _count(
    storage: DurableExecutionStorage, rule: AlertRule, start: datetime, end: datetime
) -> tuple[int, list[str], bool]:
    """Count the executions with `rule.status` updated in `(start, end]`.

    Returns the count, the newest ids, and whether the count is only a lower bound.
    """
    limit = max(rule.threshold, _FIRST_PAGE)
    while True:
        limit = min(limit, MAX_SCAN)
        heads = await storage.list_executions_async(rule.status, limit=limit)
        inside = [h for h in heads if start < h.updated_at <= end]
        reached_past = len(heads) < limit or heads[-1].updated_at <= start
        if reached_past or limit >= MAX_SCAN:
            ids = [h.execution_id for h in inside[:MAX_IDS]]
            return len(inside), ids, not reached_past
        limit *= 4


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class AlertEvaluator:
    """Evaluates rules against a storage and remembers when each last fired (one per process).

    Args:
        rules: The rules; each fires at most once per its window (see the module docstring).
        clock: Returns the current time (aware UTC); tests pass a fake one. Default: the wall clock.

    """

    def __init__(self, rules: Iterable[AlertRule], *, clock: Callable[[], datetime] | None = None) -> None:
        self.rules = list(rules)
        for rule in self.rules:
            if not isinstance(rule, AlertRule):
                raise UserError(f"alerts take AlertRule objects, got {type(rule).__name__}.")
        self.clock = clock or utcnow
        self.fired: list[Alert] = []
        """Every alert this evaluator raised, oldest first."""
        self._last_fired: dict[int, datetime] = {}

    def __repr__(self) -> str:
        return f"AlertEvaluator({self.rules!r})"

    async def check_async(self, storage: DurableExecutionStorage, now: datetime | None = None) -> list[Alert]:
        """Count each rule's window at `now` (default: the clock) and return the alerts that fire.

        Records them as fired (the rule is then silent for its window) but notifies nobody: see
        `evaluate_async`. A rule whose listing fails is logged and skipped until the next call.
        """
        moment = _aware(now if now is not None else self.clock())
        alerts = []
        for index, rule in enumerate(self.rules):
            last = self._last_fired.get(index)
            if last is not None and moment < last + rule.window:
                continue  # this window's alert was sent already
            start = moment - rule.window
            try:
                count, ids, lower_bound = await _count(storage, rule, start, moment)
            except Exception as exc:  # storage down: the next evaluation tries again
                logger.error("alert %s: counting executions failed: %s", rule.name, redact(str(exc)))
                continue
            if count < rule.threshold:
                continue
            self._last_fired[index] = moment
            alert = Alert(rule, count, start, moment, tuple(ids), moment, lower_bound, storage.backend_name)
            self.fired.append(alert)
            alerts.append(alert)
        return alerts

    async def evaluate_async(
        self, storage: DurableExecutionStorage, now: datetime | None = None
    ) -> list[Alert]:
        """`check_async`, then log each alert and notify its rule's target; never raises on a failure.

        Notifications run concurrently; a failed one is logged (see `notify_async`).
        """
        alerts = await self.check_async(storage, now)
        for alert in alerts:
            logger.warning("%s", alert.text)
        await asyncio.gather(*(_deliver(alert) for alert in alerts))
        return alerts

    check = sync_twin(check_async)
    evaluate = sync_twin(evaluate_async)


# ---- notifying --------------------------------------------------------------------------------------


async def notify_async(alert: Alert) -> None:
    """Send `alert` to its rule's target: call the callable, or POST it to the webhook URL.

    A sync callable runs in a worker thread (a slow one does not block the event loop). The webhook
    gets `alert.to_dict()` as JSON, within `rule.timeout` seconds per attempt, retried `rule.retries`
    times with exponential backoff on connection errors, timeouts and HTTP 408, 429 and 5xx.

    Raises:
        WebhookError: The webhook failed for good.
        Exception: Whatever the callable raised.

    """
    target = alert.rule.notify
    if target is None:
        return
    if isinstance(target, str):
        await _post(target, alert)
        return
    if _is_async(target):
        await target(alert)
        return
    result = await asyncio.to_thread(target, alert)
    if inspect.isawaitable(result):
        await result


def _is_async(target: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


async def _deliver(alert: Alert) -> None:
    """`notify_async`, with any failure logged instead of raised."""
    try:
        await notify_async(alert)
    except Exception as exc:
        detail = str(exc) if isinstance(exc, WebhookError) else f"{type(exc).__name__}: {redact(str(exc))}"
        logger.error(
            "alert %s: notify %s failed: %s", alert.rule.name, _notify_label(alert.rule.notify), detail
        )


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


async def _post(url: str, alert: Alert) -> None:
    """POST `alert` as JSON to `url` with the rule's timeout, retries and backoff."""
    import httpx2  # pydantic-ai's HTTP client; imported here: only webhooks need it

    rule = alert.rule
    label = _webhook_label(url)
    headers = {"User-Agent": "perdure-alerts", **rule.headers}
    body = alert.to_dict()
    attempts = rule.retries + 1
    async with httpx2.AsyncClient(timeout=rule.timeout, follow_redirects=False, http2=False) as client:
        for attempt in range(1, attempts + 1):
            try:
                async with asyncio.timeout(rule.timeout):  # the whole POST, however the server trickles
                    response = await client.post(url, json=body, headers=headers)
            except (TimeoutError, httpx2.TimeoutException):
                problem, retry = f"no answer within {rule.timeout:g}s", True
            except (httpx2.HTTPError, OSError) as exc:
                problem, retry = f"{type(exc).__name__}: {_scrub(str(exc), url, label)}", True
            else:
                if response.is_success:
                    logger.info("alert %s: sent to %s", rule.name, label)
                    return
                problem, retry = f"HTTP {response.status_code}", _retryable(response.status_code)
            if not retry or attempt == attempts:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise WebhookError(f"POST to {label} failed{tries}: {problem}")
            pause = rule.backoff * 2 ** (attempt - 1)
            logger.warning(
                "alert %s: POST to %s failed (%s); retry %d of %d in %.1fs",
                rule.name,
                label,
                problem,
                attempt,
                rule.retries,
                pause,
            )
            await asyncio.sleep(pause)


def _scrub(text: str, url: str, label: str) -> str:
    """An HTTP client's error text without the webhook URL (replaced by its label) or credentials."""
    return redact(text.replace(url, label))


# ---- the monitor loop -------------------------------------------------------------------------------


async def _wait(stop: asyncio.Event | threading.Event | None, seconds: float) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
    elif isinstance(stop, asyncio.Event):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    else:
        await asyncio.to_thread(stop.wait, seconds)


async def monitor(
    storage: DurableExecutionStorage | str,
    rules: Iterable[AlertRule] | AlertEvaluator,
    *,
    interval: float = 60.0,
    stop: asyncio.Event | threading.Event | None = None,
    iterations: int | None = None,
    clock: Callable[[], datetime] | None = None,
) -> list[Alert]:
    """Evaluate `rules` against `storage` every `interval` seconds; return the alerts raised.

    The seed's `monitor_executions`, with rules. Runs until `stop` is set or after `iterations`
    evaluations (forever when both are None); the first evaluation is immediate. Alerts are logged
    and sent to each rule's `notify`; a failing notification is logged and the loop goes on.

    Args:
        storage: The storage to watch, or its URL (then opened here and closed at the end).
        rules: The rules, or an `AlertEvaluator` (to keep its state across calls).
        interval: Seconds between two evaluations (> 0).
        stop: Set it to end the loop (an `asyncio.Event`, or a `threading.Event` for `monitor_sync`
            run in a thread).
        iterations: Evaluations to run before returning (>= 1).
        clock: The evaluator's clock (see `AlertEvaluator`); ignored when `rules` is an evaluator.

    Returns:
        Every alert raised, oldest first.

    """
    if not interval > 0:
        raise UserError(f"monitor interval must be > 0 seconds, got {interval!r}.")
    if iterations is not None and iterations < 1:
        raise UserError(f"monitor iterations must be >= 1, got {iterations!r}.")
    evaluator = rules if isinstance(rules, AlertEvaluator) else AlertEvaluator(rules, clock=clock)
    if isinstance(storage, str):
        from .storage.url import storage_from_url

        store, owned = storage_from_url(storage), True
    else:
        store, owned = storage, False
    raised: list[Alert] = []
    try:
        done = 0
        while True:
            raised.extend(await evaluator.evaluate_async(store))
            done += 1
            if (iterations is not None and done >= iterations) or (stop is not None and stop.is_set()):
                return raised
            await _wait(stop, interval)
            if stop is not None and stop.is_set():
                return raised
    finally:
        if owned:
            await store.close_async()


def monitor_sync(
    storage: DurableExecutionStorage | str,
    rules: Iterable[AlertRule] | AlertEvaluator,
    *,
    interval: float = 60.0,
    stop: threading.Event | None = None,
    iterations: int | None = None,
    clock: Callable[[], datetime] | None = None,
) -> list[Alert]:
    """Sync twin of `monitor` (blocks; `stop` is a `threading.Event`)."""
    return run_sync(monitor(storage, rules, interval=interval, stop=stop, iterations=iterations, clock=clock))
