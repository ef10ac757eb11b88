"""Automatic recovery: find executions a crash, a `kill -9` or a deploy interrupted, and resume them.

An execution is *interrupted* when its head says `success` (in progress) but no live worker runs it:
its lease is absent, expired, or owned by a process of this host that no longer exists. Recovery
resumes each one from its journal, so finished model requests and tool calls are replayed, not
repeated. It is safe to run from many workers at once: an execution is only resumed under its
lease, taken atomically in the storage, and every decision is re-checked on the head the lease
returned; a worker that loses the race skips the execution (`ExecutionLeasedError`).

Choices worth knowing (see `recover_interrupted_async` for the parameters):

- `attempts` on the head counts every start and resume of an execution, the first run included.
  An interrupted execution that already had `max_attempts` attempts is not resumed again: it is
  marked `failed` with a `RecoveryGaveUpError` ("gave up after N attempts"), so a poison run that
  kills its worker every time stops being picked up and shows up for an operator. Resuming it by
  hand (`continue_durable`) still works.
- `min_idle` guards the only unleased in-progress state that is not a crash: a run that has just
  created its head and is about to take its lease (`attempts == 0`; the engine takes the lease
  before it counts an attempt). By default it applies to those only, and to `failed` executions
  (when `statuses` includes them) whose process may be about to retry them itself. An execution
  that ran before and holds no live lease was interrupted for sure and is recovered at once, which
  is what lets a worker that shut down gracefully hand its executions over immediately.
- `delay` is a back-off per execution: after its k-th resume (k = attempts - 1 >= 1) an execution
  is retried only once it has been idle for `delay * 2**(k-1)` seconds.
- `timeout` cancels a resume that runs too long. The cancelled attempt leaves its journal intact,
  the head `success` and the lease released, so a later pass retries it (subject to `delay` and
  `max_attempts`); the pass reports it as failed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Awaitable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai import Agent as PydanticAgent

from ..errors import (
    ExecutionCompletedError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    NonIdempotentReplayError,
    PerdureError,
    UserError,
)
from ..records import ErrorInfo, ExecutionRecord, ExecutionStatus, utcnow
from ..storage.base import DurableExecutionStorage
from .execution import DEFAULT_LEASE_TTL, DurableExecution, default_worker_id, owner_is_dead

__all__ = [
    "AgentResolver",
    "RecoveryGaveUpError",
    "RecoveryOptions",
    "RecoveryReport",
    "find_recoverable_async",
    "recover_execution_async",
    "recover_interrupted_async",
]

logger = logging.getLogger("perdure")

AgentResolver = Any
"""A perdure `Agent`, a pydantic-ai `Agent` with `PerdureDurability`, a mapping `{agent_name: agent}`
or a callable `(head: ExecutionRecord) -> agent | None` (sync or async)."""

_NEVER_RECOVERED = frozenset({ExecutionStatus.COMPLETED, ExecutionStatus.CANCELLED, ExecutionStatus.PAUSED})


class RecoveryGaveUpError(PerdureError):
    """Recorded on an interrupted execution that reached `max_attempts`: recovery stopped retrying it."""

    def __init__(self, execution_id: str, attempts: int) -> None:
        super().__init__(
            f"Recovery gave up after {attempts} attempts of execution {execution_id!r}: it was interrupted "
            f"every time (a worker crash, kill or timeout). Inspect it with `perdure show`, fix the cause, "
            f"then resume it by hand with agent.continue_durable({execution_id!r}, storage).",
            execution_id=execution_id,
        )
        self.attempts = attempts


@dataclass
class RecoveryReport:
    """What one recovery pass (or a worker's whole life) did, by execution id."""

    recovered: list[str] = field(default_factory=list)
    """Resumed and completed."""
    paused: list[str] = field(default_factory=list)
    """Resumed and stopped again waiting for a human decision (approval, interrupted call)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Resumed and failed (error text), timed out, or given up after `max_attempts`."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Not resumed, with the reason: leased elsewhere, not idle long enough, no agent, ..."""

    def merge(self, other: RecoveryReport) -> None:
        """Add another report's outcomes; a later outcome of an execution replaces an earlier skip."""
        for execution_id in [*other.recovered, *other.paused, *other.failed]:
            self.skipped.pop(execution_id, None)
        self.recovered.extend(i for i in other.recovered if i not in self.recovered)
        self.paused.extend(i for i in other.paused if i not in self.paused)
        self.failed.update(other.failed)
        done = {*self.recovered, *self.paused, *self.failed}
        self.skipped.update({k: v for k, v in other.skipped.items() if k not in done})

    def __str__(self) -> str:
        return (
            f"recovered {len(self.recovered)}, paused {len(self.paused)}, failed {len(self.failed)}, "
            f"skipped {len(self.skipped)}"
        )


@dataclass(frozen=True)
class RecoveryOptions:
    """The knobs of recovery, validated once; see `recover_interrupted_async`."""

    max_attempts: int = 5
    delay: float = 0.0
    timeout: float | None = None
    lease_ttl: float = DEFAULT_LEASE_TTL
    worker_id: str | None = None
    min_idle: float | None = None
    statuses: tuple[ExecutionStatus, ...] = (ExecutionStatus.SUCCESS,)
    """Converted from strings and validated on creation."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UserError(f"max_attempts must be >= 1, got {self.max_attempts!r}.")
        if self.delay < 0:
            raise UserError(f"delay must be >= 0 seconds, got {self.delay!r}.")
        if self.timeout is not None and not self.timeout > 0:
            raise UserError(f"timeout must be > 0 seconds or None, got {self.timeout!r}.")
        if not self.lease_ttl > 0:
            raise UserError(f"lease_ttl must be > 0 seconds, got {self.lease_ttl!r}.")
        if self.min_idle is not None and self.min_idle < 0:
            raise UserError(f"min_idle must be >= 0 seconds or None, got {self.min_idle!r}.")
        try:
            statuses = tuple(ExecutionStatus(s) for s in self.statuses)
        except ValueError as exc:
            raise UserError(f"statuses: {exc}; use 'success' and/or 'failed'.") from exc
        refused = sorted(s.value for s in statuses if s in _NEVER_RECOVERED)
        if refused or not statuses:
            raise UserError(
                f"statuses must name 'success' and/or 'failed', got {[s.value for s in statuses]}: paused "
                f"executions wait for a human, completed and cancelled ones are finished."
            )
        object.__setattr__(self, "statuses", statuses)

    def idle_needed(self, head: ExecutionRecord) -> float:
        """Seconds `head` must have been idle before it is resumed (grace for new runs + back-off)."""
        base = self.min_idle
        if base is None:
            fresh = head.attempts == 0 or head.status is ExecutionStatus.FAILED
            base = self.lease_ttl if fresh else 0.0
        backoff = self.delay * 2 ** (head.attempts - 2) if head.attempts >= 2 and self.delay else 0.0
        return base + backoff


def _not_eligible(head: ExecutionRecord, options: RecoveryOptions) -> str | None:
    """Why `head` must not be resumed now (None when it may); called again under the lease."""
    if head.status not in options.statuses:
        return f"status is {head.status.value}"
    now = utcnow()
    expires = head.lease_expires_at
    if head.lease_owner and expires is not None and expires > now and not owner_is_dead(head.lease_owner):
        return f"leased by {head.lease_owner} until {expires.isoformat()}"
    idle_needed = options.idle_needed(head)
    idle = (now - head.updated_at).total_seconds()
    if idle < idle_needed:
        return f"idle for {max(idle, 0):.1f}s, waiting until {idle_needed:.1f}s"
    return None


async def find_recoverable_async(
    storage: DurableExecutionStorage,
    options: RecoveryOptions,
    *,
    exclude: Collection[str] = (),
) -> tuple[list[ExecutionRecord], dict[str, str]]:
    """Heads that look recoverable now, oldest first, and the reasons the others were skipped.

    Uses the storage's status index (`list_executions_async(status=...)`). The answer is a snapshot:
    `recover_execution_async` checks it again under the lease.
    """
    heads: list[ExecutionRecord] = []
    for status in options.statuses:
        heads.extend(await storage.list_executions_async(status=status))
    heads.sort(key=lambda h: (h.updated_at, h.execution_id))
    candidates: list[ExecutionRecord] = []
    skipped: dict[str, str] = {}
    for head in heads:
        if head.execution_id in exclude:
            continue
        reason = _not_eligible(head, options)
        if reason is None:
            candidates.append(head)
        else:
            skipped[head.execution_id] = reason
    return candidates, skipped


async def _resolve_agent(resolver: AgentResolver, head: ExecutionRecord) -> Any:
    """The agent to resume `head` with, or None when this resolver has none for it."""
    if isinstance(resolver, PydanticAgent) or _is_facade(resolver):
        return resolver
    if isinstance(resolver, Mapping):
        return resolver.get(head.task.agent_name)
    if callable(resolver):
        agent = resolver(head)
        if inspect.isawaitable(agent):
            agent = await agent
        return agent
    raise UserError(
        f"Cannot recover with {resolver!r}: pass a perdure Agent, a pydantic-ai Agent with "
        f"PerdureDurability, a mapping {{agent_name: agent}} or a callable (head) -> agent."
    )


def _is_facade(obj: Any) -> bool:
    """A perdure `Agent` (duck-typed: perdure.agent sits above perdure.durable and is not imported)."""
    return not isinstance(obj, PydanticAgent) and callable(getattr(obj, "continue_durable_async", None))


async def _resume(
    storage: DurableExecutionStorage, agent: Any, head: ExecutionRecord, owner: str, lease_ttl: float
) -> bool:
    """Resume `head` with `agent` as lease owner `owner`; return whether it ended paused."""
    execution_id = head.execution_id
    if isinstance(agent, PydanticAgent):
        durable = DurableExecution(
            storage, execution_id=execution_id, worker_id=owner, lease_ttl=lease_ttl, auto_cleanup=False
        )
        return (await durable.resume_agent_async(agent)).paused
    if not _is_facade(agent):
        raise UserError(
            f"The agent resolver returned {agent!r} for execution {execution_id!r}: expected a perdure "
            f"Agent or a pydantic-ai Agent with PerdureDurability."
        )
    rebuild = getattr(agent, "_rebuild", None)
    run_kwargs = getattr(agent, "_run_kwargs", None)
    if callable(rebuild) and callable(run_kwargs):
        # The facade's own builder, so the resume runs under this worker's lease owner and ttl
        # (`continue_durable_async` does not take them yet).
        pydantic_agent = rebuild(head, [])
        durable = DurableExecution(
            storage,
            execution_id=execution_id,
            worker_id=owner,
            lease_ttl=lease_ttl,
            auto_cleanup=False,
            debug=bool(getattr(agent, "debug", False)),
        )
        return (await durable.resume_agent_async(pydantic_agent, **run_kwargs())).paused
    supported = inspect.signature(agent.continue_durable_async).parameters
    extra = {k: v for k, v in {"worker_id": owner, "lease_ttl": lease_ttl}.items() if k in supported}
    await agent.continue_durable_async(execution_id, storage, **extra)
    final = await storage.load_state_async(execution_id)
    return final is not None and final.status is ExecutionStatus.PAUSED


async def recover_execution_async(
    storage: DurableExecutionStorage,
    head: ExecutionRecord,
    agent_resolver: AgentResolver,
    options: RecoveryOptions,
) -> RecoveryReport:
    """Resume one execution if it is still recoverable once its lease is held; report the outcome."""
    report = RecoveryReport()
    execution_id = head.execution_id
    # A cheap read first: the listing may be stale (another worker took or finished it meanwhile), and
    # refusing it here costs no write and no lock, unlike taking and giving back its lease.
    current = await storage.load_state_async(execution_id)
    reason = "deleted" if current is None else _not_eligible(current, options)
    if reason is not None:
        report.skipped[execution_id] = reason
        return report
    owner = f"{options.worker_id or default_worker_id()}#{uuid.uuid4().hex[:6]}"
    try:
        leased = await storage.acquire_lease_async(execution_id, owner, options.lease_ttl)
    except ExecutionLeasedError as exc:
        if not owner_is_dead(exc.owner):
            report.skipped[execution_id] = f"leased by {exc.owner}"
            return report
        try:
            leased = await storage.acquire_lease_async(
                execution_id, owner, options.lease_ttl, steal_from=exc.owner
            )
        except ExecutionLeasedError as again:  # another worker took over the dead owner's lease first
            report.skipped[execution_id] = f"leased by {again.owner}"
            return report
        logger.warning("[%s] took over the lease of dead local process %s", execution_id, exc.owner)
    except ExecutionNotFoundError:
        report.skipped[execution_id] = "deleted"
        return report
    try:
        return await _recover_leased(storage, leased, agent_resolver, options, owner)
    finally:
        try:  # a no-op when the attempt released it already; never touches another owner's lease
            await storage.release_lease_async(execution_id, owner)
        except Exception:  # the lease expires on its own; keep the outcome
            logger.warning("[%s] could not release the lease", execution_id, exc_info=True)


async def _recover_leased(
    storage: DurableExecutionStorage,
    head: ExecutionRecord,
    agent_resolver: AgentResolver,
    options: RecoveryOptions,
    owner: str,
) -> RecoveryReport:
    report = RecoveryReport()
    execution_id = head.execution_id
    # The listing was a snapshot: another worker may have finished or advanced it meanwhile.
    reason = _not_eligible(head.model_copy(update={"lease_owner": None}), options)
    if reason is not None:
        report.skipped[execution_id] = reason
        return report
    if head.attempts >= options.max_attempts:
        if head.status is not ExecutionStatus.SUCCESS:
            report.skipped[execution_id] = f"max attempts reached ({head.attempts})"
            return report
        error = RecoveryGaveUpError(execution_id, head.attempts)
        await storage.save_state_async(
            head.model_copy(
                update={
                    "status": ExecutionStatus.FAILED,
                    "error": ErrorInfo.from_exception(error),
                    "updated_at": utcnow(),
                }
            )
        )
        logger.error("[%s] %s", execution_id, error)
        report.failed[execution_id] = f"gave up after {head.attempts} attempts"
        return report
    try:
        agent = await _resolve_agent(agent_resolver, head)
    except Exception as exc:
        logger.error("[%s] agent resolver failed: %s", execution_id, exc)
        report.failed[execution_id] = f"agent resolver failed: {type(exc).__name__}: {exc}"
        return report
    if agent is None:
        report.skipped[execution_id] = f"no agent for agent_name {head.task.agent_name!r}"
        return report
    logger.info(
        "[%s] recovering (attempt %d, step %d %s)",
        execution_id,
        head.attempts + 1,
        head.step_index,
        head.step_name or "-",
    )
    resume = _resume(storage, agent, head, owner, options.lease_ttl)
    try:
        paused = await (resume if options.timeout is None else asyncio.wait_for(resume, options.timeout))
    except TimeoutError:
        logger.error("[%s] recovery timed out after %ss; cancelled", execution_id, options.timeout)
        report.failed[execution_id] = f"timed out after {options.timeout}s (cancelled; journal intact)"
    except ExecutionCompletedError:
        report.skipped[execution_id] = "already completed"
    except ExecutionLeasedError as exc:
        report.skipped[execution_id] = f"leased by {exc.owner}"
    except ExecutionNotFoundError:
        report.skipped[execution_id] = "deleted"
    except NonIdempotentReplayError as exc:
        logger.warning("[%s] paused: %s", execution_id, exc)
        report.paused.append(execution_id)
    except Exception as exc:
        logger.error("[%s] recovery failed: %s: %s", execution_id, type(exc).__name__, exc)
        report.failed[execution_id] = f"{type(exc).__name__}: {exc}"
    else:
        if paused:
            report.paused.append(execution_id)
        else:
            logger.info("[%s] recovered", execution_id)
            report.recovered.append(execution_id)
    return report


async def recover_interrupted_async(
    storage: DurableExecutionStorage,
    agent_resolver: AgentResolver,
    *,
    max_attempts: int = 5,
    delay: float = 0.0,
    timeout: float | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
    worker_id: str | None = None,
    min_idle: float | None = None,
    limit: int | None = None,
    concurrency: int = 1,
    statuses: Iterable[ExecutionStatus | str] = (ExecutionStatus.SUCCESS,),
) -> RecoveryReport:
    """Resume every interrupted execution of `storage` once; safe to run from many workers at once.

    Args:
        storage: Where the executions live.
        agent_resolver: The agent(s) to resume with: a perdure `Agent`, a pydantic-ai `Agent` with
            `PerdureDurability`, a mapping `{agent_name: agent}` (by `head.task.agent_name`), or a
            callable `(head) -> agent | None`, sync or async. Executions without an agent are skipped
            (another worker's app may serve them).
        max_attempts: Attempts (first run included) after which an interrupted execution is marked
            `failed` with `RecoveryGaveUpError` instead of being resumed again.
        delay: Back-off base in seconds: after its k-th resume an execution waits `delay * 2**(k-1)`
            seconds of idleness before the next one.
        timeout: Seconds one resume may run before it is cancelled (journal intact, lease released).
        lease_ttl: Lease time of each resumed execution; its heartbeat renews it.
        worker_id: Prefix of the lease owner ids (default `host:pid:random`); each resume appends a
            random suffix, so two resumes never share a lease.
        min_idle: Seconds an execution must have been idle. Default: `lease_ttl` for executions that
            never started an attempt (a run that may be about to take its lease) and for failed ones
            (their process may retry them itself), 0 for the others.
        limit: Resume at most this many executions in this pass.
        concurrency: How many executions to resume at the same time.
        statuses: Which statuses count as interrupted: `success` (default), and `failed` to retry
            failed executions too.

    Returns:
        A `RecoveryReport` of this pass.

    """
    if concurrency < 1:
        raise UserError(f"concurrency must be >= 1, got {concurrency!r}.")
    options = RecoveryOptions(
        max_attempts=max_attempts,
        delay=delay,
        timeout=timeout,
        lease_ttl=lease_ttl,
        worker_id=worker_id,
        min_idle=min_idle,
        statuses=tuple(statuses),  # type: ignore[arg-type]  # validated and converted by RecoveryOptions
    )
    candidates, skipped = await find_recoverable_async(storage, options)
    if limit is not None:
        candidates = candidates[: max(limit, 0)]
    report = RecoveryReport(skipped=skipped)
    if not candidates:
        return report
    logger.info("recovery: %d interrupted execution(s) to resume", len(candidates))
    semaphore = asyncio.Semaphore(concurrency)

    async def one(head: ExecutionRecord) -> RecoveryReport:
        async with semaphore:
            try:
                return await recover_execution_async(storage, head, agent_resolver, options)
            except Exception as exc:  # e.g. the storage failed taking the lease: report, go on
                logger.error("[%s] recovery failed: %s", head.execution_id, exc)
                return RecoveryReport(failed={head.execution_id: f"{type(exc).__name__}: {exc}"})

    for outcome in await _gather(one(head) for head in candidates):
        report.merge(outcome)
    return report


async def _gather(coros: Iterable[Awaitable[RecoveryReport]]) -> list[RecoveryReport]:
    """Run all; on cancellation cancel the rest and wait for them, so every lease gets released."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
