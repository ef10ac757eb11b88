"""`Worker`: a long-running process that keeps recovering interrupted executions.

`perdure worker` is a thin CLI around it; tests drive it in-process. A worker runs one recovery pass
at start-up, then polls the storage every `poll_interval` seconds. It keeps up to `concurrency`
executions running and refills free slots from the latest listing as soon as one finishes, so one
long execution does not hold the others back. Every execution runs under its own lease
(`recover_execution_async`), which is what makes any number of workers on one storage safe.

Shutdown (`stop()`, SIGTERM or SIGINT): the worker stops taking executions and gives the running
ones `grace_period` seconds to finish. Whatever still runs then is cancelled: a cancelled attempt
starts nothing more, leaves its journal intact and its head `success`, and releases its lease on the
way out, so another worker takes it over at once instead of waiting for the lease to expire. A unit
running in a thread (a sync tool) cannot be interrupted: the attempt keeps its lease, waits for the
thread, journals the unit's result and only then gives up, so no other worker can run that unit
again meanwhile (see `perdure.durable._threads`). A second signal cancels the rest at once; it
cannot shorten a thread.

Retention: with `retention_days` set, the worker also deletes executions last updated more than
that many days ago (`cleanup_old_executions_async`, which never touches a leased, running one, nor
one whose status is in `retention_keep`), at start-up and then at most once every `cleanup_every`
seconds, logging how many it removed. With `completed_ttl` set, the same schedule deletes completed
executions that completed more than that many seconds ago (`PERDURE_TTL`).

Alerts: with `alerts` (`perdure.alerts.AlertRule`s), the worker evaluates the rules at each poll and
once more when it stops, in a task of their own (a slow webhook never delays recovery); each rule
fires at most once per window (see `perdure.alerts`), and a failing notification is only logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from collections.abc import Iterable

from .._sync import run_sync
from ..alerts import AlertEvaluator, AlertRule
from ..errors import UserError
from ..records import ExecutionRecord, ExecutionStatus
from ..storage.base import DurableExecutionStorage, cleanup_executions
from ..storage.base import retention_keep as retention_keep_statuses
from .identity import normalize_allow_changes
from .leases import DEFAULT_LEASE_TTL, default_worker_id
from .recovery import (
    AgentResolver,
    RecoveryOptions,
    RecoveryReport,
    find_recoverable_async,
    recover_execution_async,
)

__all__ = ["Worker"]

logger = logging.getLogger("perdure.worker")


class Worker:
    """Recovers interrupted executions of one storage until stopped.

    Args:
        storage: The storage to watch.
        agent_resolver: The agent(s) to resume with (see `recover_interrupted_async`).
        concurrency: Executions resumed at the same time by this worker.
        poll_interval: Seconds between two listings of the storage.
        grace_period: Seconds running executions may take to finish after `stop()`; then they are
            cancelled (journal intact, lease released).
        max_attempts: See `recover_interrupted_async`.
        delay: See `recover_interrupted_async`.
        timeout: See `recover_interrupted_async`.
        lease_ttl: See `recover_interrupted_async`.
        min_idle: See `recover_interrupted_async`.
        worker_id: Prefix of this worker's lease owner ids (default `host:pid:random`).
        statuses: See `recover_interrupted_async`.
        allow_changes: Identity differences a resume accepts on purpose: any of `"tools"`,
            `"output"`, `"instructions"`, `"prompt"` (see `perdure.durable.identity`).
        options: All recovery settings at once (the object `recover_interrupted_async` and the CLI
            use too); when given, the individual recovery arguments above are ignored.
        retention_days: Delete executions last updated more than this many days ago, on a schedule
            (None, the default: no cleanup; `perdure worker` defaults it to `PERDURE_RETENTION_DAYS`).
        cleanup_every: Seconds between two cleanups (checked at each poll; default one hour).
        retention_keep: Statuses the scheduled cleanup never deletes (e.g. `["failed"]`); None, the
            default, reads `PERDURE_RETENTION_KEEP` at each cleanup; empty keeps none.
        completed_ttl: Delete completed executions this many seconds after they completed, on the
            cleanup schedule (None, the default: keep them; `perdure worker` defaults it to
            `PERDURE_TTL`).
        alerts: Alert rules evaluated at each poll and when the worker stops (see `perdure.alerts`).

    """

    def __init__(
        self,
        storage: DurableExecutionStorage,
        agent_resolver: AgentResolver,
        *,
        concurrency: int = 1,
        poll_interval: float = 5.0,
        grace_period: float = 10.0,
        max_attempts: int = 5,
        delay: float = 0.0,
        timeout: float | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        min_idle: float | None = None,
        worker_id: str | None = None,
        statuses: Iterable[ExecutionStatus | str] = (ExecutionStatus.SUCCESS,),
        allow_changes: Iterable[str] = (),
        options: RecoveryOptions | None = None,
        retention_days: float | None = None,
        cleanup_every: float = 3600.0,
        alerts: Iterable[AlertRule] = (),
        retention_keep: Iterable[ExecutionStatus | str] | str | None = None,
        completed_ttl: float | None = None,
    ) -> None:
        if concurrency < 1:
            raise UserError(f"concurrency must be >= 1, got {concurrency!r}.")
        if not poll_interval > 0:
            raise UserError(f"poll_interval must be > 0 seconds, got {poll_interval!r}.")
        if grace_period < 0:
            raise UserError(f"grace_period must be >= 0 seconds, got {grace_period!r}.")
        if retention_days is not None and retention_days < 0:
            raise UserError(f"retention_days must be >= 0, got {retention_days!r}.")
        if not cleanup_every > 0:
            raise UserError(f"cleanup_every must be > 0 seconds, got {cleanup_every!r}.")
        self.retention_days = None if retention_days is None else float(retention_days)
        self.cleanup_every = float(cleanup_every)
        self.retention_keep = None if retention_keep is None else retention_keep_statuses(retention_keep)
        if completed_ttl is not None and not completed_ttl > 0:
            raise UserError(f"completed_ttl must be > 0 seconds, got {completed_ttl!r}.")
        self.completed_ttl = None if completed_ttl is None else float(completed_ttl)
        """Seconds a completed execution is kept (`PERDURE_TTL` for `perdure worker`); None: kept."""
        """Statuses the scheduled cleanup keeps (None: the `retention_keep` setting at each cleanup)."""
        self.cleaned = 0
        """Executions this worker's scheduled cleanups deleted so far."""
        self._next_cleanup = 0.0
        rules = list(alerts)
        self.alerts = AlertEvaluator(rules) if rules else None
        """The worker's alert rules and what they fired (`alerts.fired`); None without rules."""
        self._alerting: asyncio.Task[object] | None = None
        self.storage = storage
        self.agent_resolver = agent_resolver
        self.concurrency = concurrency
        self.poll_interval = float(poll_interval)
        self.grace_period = float(grace_period)
        self.worker_id = (
            (options.worker_id if options is not None else None) or worker_id or default_worker_id()
        )
        self.options = (
            options
            if options is not None
            else RecoveryOptions(
                max_attempts=max_attempts,
                delay=delay,
                timeout=timeout,
                lease_ttl=lease_ttl,
                worker_id=self.worker_id,
                min_idle=min_idle,
                statuses=tuple(statuses),  # type: ignore[arg-type]  # converted by RecoveryOptions
                allow_changes=normalize_allow_changes(allow_changes),
            )
        )
        self.report = RecoveryReport()
        """Everything this worker did so far (the latest outcome per execution)."""
        self._running: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._cancel_now = False

    def __repr__(self) -> str:
        return f"Worker(worker_id={self.worker_id!r}, storage={self.storage!r})"

    @property
    def running(self) -> list[str]:
        """Ids of the executions this worker is resuming right now."""
        return list(self._running)

    def stop(self, *, cancel: bool = False) -> None:
        """Stop taking executions; `cancel` also cancels the running ones now (no grace period).

        Safe to call from a signal handler, from another thread, or before `run_async` started. A
        stopped worker stays stopped: create a new one to run again.
        """
        self._stopping = True
        self._cancel_now = self._cancel_now or cancel
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            logger.warning("%s again: cancelling %d running execution(s) now", name, len(self._running))
            self.stop(cancel=True)
        else:
            logger.info(
                "%s: stopping; %d running execution(s) get %.0fs to finish",
                name,
                len(self._running),
                self.grace_period,
            )
            self.stop()

    async def run_async(self, *, once: bool = False, handle_signals: bool = False) -> RecoveryReport:
        """Recover until `stop()` (or, with `once`, until one listing's executions are done).

        Args:
            once: Run a single recovery pass and return.
            handle_signals: Install SIGTERM/SIGINT handlers that call `stop()` (main thread only).

        Returns:
            The worker's cumulative `RecoveryReport`.

        """
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._on_signal, int(sig))
                installed.append(sig)
        logger.info(
            "worker %s: watching %r (concurrency %d, poll every %.1fs, lease %.1fs)",
            self.worker_id,
            self.storage,
            self.concurrency,
            self.poll_interval,
            self.options.lease_ttl,
        )
        try:
            await self._loop_until_stopped(once)
            await self._drain()
            await self._evaluate_alerts(final=True)
        finally:
            if self._alerting is not None:
                self._alerting.cancel()
            for sig in installed:
                self._loop.remove_signal_handler(sig)
            # Only left over when run_async itself was cancelled: cancel them too, and wait, so that
            # every attempt releases its lease before this returns.
            leftover = list(self._running.values())
            for task in leftover:
                task.cancel()
            await asyncio.gather(*leftover, return_exceptions=True)
        logger.info("worker %s stopped: %s", self.worker_id, self.report)
        return self.report

    def run(self, *, once: bool = False) -> RecoveryReport:
        """Sync twin of `run_async` (no signal handlers)."""
        return run_sync(self.run_async(once=once))

    async def _loop_until_stopped(self, once: bool) -> None:
        assert self._wake is not None
        queue: deque[ExecutionRecord] = deque()
        next_poll = 0.0
        polled = False
        while not self._stopping:
            if not queue and not (once and polled) and time.monotonic() >= next_poll:
                await self._cleanup_if_due()
                await self._evaluate_alerts()
                queue.extend(await self._poll())
                polled = True
                next_poll = time.monotonic() + self.poll_interval
            while queue and len(self._running) < self.concurrency and not self._stopping:
                head = queue.popleft()
                if head.execution_id not in self._running:
                    self._start(head)
            if once and polled and not queue and not self._running:
                return
            if queue and len(self._running) >= self.concurrency:
                wait_for: float | None = None  # a slot frees up first
            elif once:
                wait_for = None  # only running executions can make progress
            else:
                wait_for = max(next_poll - time.monotonic(), 0.0)
            self._wake.clear()
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_for)

    async def _cleanup_if_due(self) -> None:
        """Run the scheduled cleanup when retention (or a completed TTL) is on and it is due."""
        if self.retention_days is None and self.completed_ttl is None:
            return
        if time.monotonic() < self._next_cleanup:
            return
        self._next_cleanup = time.monotonic() + self.cleanup_every
        if self.completed_ttl is not None:
            await self._expire_completed(self.completed_ttl)
        if self.retention_days is None:
            return
        try:
            removed = await cleanup_executions(
                self.storage, self.retention_days, keep_statuses=self.retention_keep
            )
        except Exception as exc:  # storage down: recovery goes on, the next cleanup tries again
            logger.error("cleanup of executions older than %g day(s) failed: %s", self.retention_days, exc)
            return
        self.cleaned += removed
        logger.info(
            "cleanup: removed %d execution(s) last updated more than %g day(s) ago",
            removed,
            self.retention_days,
        )

    async def _expire_completed(self, ttl: float) -> None:
        """Delete completed executions that completed more than `ttl` seconds ago."""
        others = [status for status in ExecutionStatus if status is not ExecutionStatus.COMPLETED]
        try:
            removed = await cleanup_executions(self.storage, ttl / 86400, keep_statuses=others)
        except Exception as exc:  # storage down: recovery goes on, the next cleanup tries again
            logger.error("expiry of completed executions older than %gs failed: %s", ttl, exc)
            return
        self.cleaned += removed
        if removed:
            logger.info("cleanup: removed %d completed execution(s) older than %gs (ttl)", removed, ttl)

    async def _evaluate_alerts(self, *, final: bool = False) -> None:
        """Start an evaluation of the alert rules unless one still runs; `final` waits for it."""
        if self.alerts is None:
            return
        if self._alerting is not None and not self._alerting.done():
            if not final:
                return  # still notifying (a webhook retrying): the next poll evaluates again
            await asyncio.wait([self._alerting])
        self._alerting = asyncio.create_task(self.alerts.evaluate_async(self.storage), name="alerts")
        if final:
            await self._alerting

    async def _poll(self) -> list[ExecutionRecord]:
        try:
            candidates, skipped = await find_recoverable_async(
                self.storage, self.options, exclude=set(self._running)
            )
        except Exception as exc:  # storage down: keep the worker alive, try again next poll
            logger.error("listing executions failed: %s", exc)
            return []
        self.report.merge(RecoveryReport(skipped=skipped))
        refused = self.report.refused
        # Refused before anything ran (see RecoveryReport.refused): not again until the head changes.
        candidates = [h for h in candidates if refused.get(h.execution_id) != h.updated_at]
        if candidates:
            logger.info("found %d interrupted execution(s)", len(candidates))
        return candidates

    def _start(self, head: ExecutionRecord) -> None:
        task = asyncio.create_task(self._recover(head), name=f"recover:{head.execution_id}")
        self._running[head.execution_id] = task

    async def _recover(self, head: ExecutionRecord) -> None:
        execution_id = head.execution_id
        try:
            outcome = await recover_execution_async(self.storage, head, self.agent_resolver, self.options)
        except asyncio.CancelledError:
            logger.warning("[%s] cancelled by shutdown; journal intact, lease released", execution_id)
            outcome = RecoveryReport(skipped={execution_id: "cancelled by worker shutdown"})
            self.report.merge(outcome)
            raise
        except Exception as exc:
            logger.error("[%s] recovery failed: %s: %s", execution_id, type(exc).__name__, exc)
            outcome = RecoveryReport(failed={execution_id: f"{type(exc).__name__}: {exc}"})
        finally:
            self._running.pop(execution_id, None)
            if self._wake is not None:
                self._wake.set()
        self.report.merge(outcome)
        for execution_id, reason in outcome.skipped.items():
            logger.debug("[%s] skipped: %s", execution_id, reason)

    async def _drain(self) -> None:
        """Give running executions the grace period, then cancel them and wait for their cleanup."""
        assert self._wake is not None
        deadline = time.monotonic() + self.grace_period
        if self._running and not self._cancel_now:
            logger.info(
                "waiting up to %.0fs for %d running execution(s)", self.grace_period, len(self._running)
            )
        while self._running and not self._cancel_now:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
        tasks = list(self._running.values())
        if tasks:
            logger.warning("cancelling %d running execution(s)", len(tasks))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
