"""Automatic recovery: find executions a crash, a `kill -9` or a deploy interrupted, and resume them.

An execution is *interrupted* when its head says `success` (in progress) but no live worker runs it:
its lease is absent, expired, or owned by a process of this host that no longer exists. Recovery
resumes each one from its journal, so finished model requests and tool calls are replayed, not
repeated. It is safe to run from many workers at once: an execution is only resumed under its
lease, taken atomically in the storage, and every decision is re-checked on the head the lease
returned; a worker that loses the race skips the execution (`ExecutionLeasedError`).

This module resumes: one execution under its lease (`recover_execution_async`, with the agent the
resolver routes it to) and a whole pass (`recover_interrupted_async`). Which executions are
eligible, with `min_idle` and the `delay` back-off, is decided in `perdure.durable._recoverable`;
`RecoveryOptions` and `find_recoverable_async` are re-exported here. Choices worth knowing (see
`recover_interrupted_async` for the parameters):

- `attempts` on the head counts every start and resume of an execution, the first run included.
  An interrupted execution that already had `max_attempts` attempts is not resumed again: it is
  marked `failed` with a `RecoveryGaveUpError` ("gave up after N attempts"), so a poison run that
  kills its worker every time stops being picked up and shows up for an operator. Resuming it by
  hand (`continue_durable`) still works.
- `timeout` cancels a resume that runs too long. The cancelled attempt leaves its journal intact,
  the head `success` and the lease released, so a later pass retries it (subject to `delay` and
  `max_attempts`); the pass reports it as failed. A unit running in a thread cannot be interrupted:
  the timeout is then exceeded by as long as that unit still needs, and its result is journaled
  before the lease is released.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic_ai import Agent as PydanticAgent

from ..errors import (
    CorruptRecordError,
    ExecutionCancelledError,
    ExecutionCompletedError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    IdentityError,
    NonIdempotentReplayError,
    RecoveryGaveUpError,
    ToolNotFoundError,
    UnregisteredReferenceError,
    UserError,
)
from ..records import ExecutionRecord, ExecutionStatus
from ..storage.base import DurableExecutionStorage
from ._recoverable import RecoveryOptions, find_recoverable_async, not_eligible
from .engine import AgentFactory, ExecutionHandle, ResumeTarget
from .identity import normalize_allow_changes
from .leases import DEFAULT_LEASE_TTL, default_worker_id, owner_is_dead

__all__ = [
    "AgentNotServedError",
    "AgentResolver",
    "RecoveryGaveUpError",
    "RecoveryOptions",
    "RecoveryReport",
    "find_recoverable_async",
    "recorded_agent_name",
    "recover_execution_async",
    "recover_interrupted_async",
    "resolve_agent",
    "resume_leased",
]

logger = logging.getLogger("perdure")

AgentResolver = Any
"""A perdure `Agent`, a pydantic-ai `Agent` with `PerdureDurability`, a list of them, a mapping
`{agent_name: agent}` or a callable `(head: ExecutionRecord) -> agent | None` (sync or async).

Agents (alone, in a list or in a mapping) serve the executions recorded under their name: a worker
never resumes another agent's execution. A callable decides by itself."""

_REFUSALS = (IdentityError, ToolNotFoundError, UnregisteredReferenceError, CorruptRecordError)
"""Errors that refuse a resume before anything runs; the same program resuming again cannot help."""


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
    """Not resumed, with the reason: leased elsewhere, not idle long enough, ..."""
    not_served: dict[str, str] = field(default_factory=dict)
    """Left alone because no agent of this worker serves them: execution id -> recorded agent name."""
    refused: dict[str, datetime] = field(default_factory=dict)
    """Among `failed`: refused before anything ran (identity mismatch, unregistered code, corrupt
    journal), with the head's `updated_at` then. A worker does not retry them until the head changes."""

    def merge(self, other: RecoveryReport) -> None:
        """Add another report's outcomes; a later outcome of an execution replaces an earlier skip."""
        for execution_id in [*other.recovered, *other.paused, *other.failed]:
            self.skipped.pop(execution_id, None)
        self.recovered.extend(i for i in other.recovered if i not in self.recovered)
        self.paused.extend(i for i in other.paused if i not in self.paused)
        self.failed.update(other.failed)
        done = {*self.recovered, *self.paused, *self.failed}
        self.skipped.update({k: v for k, v in other.skipped.items() if k not in done})
        self.not_served.update({k: v for k, v in other.not_served.items() if k not in done})
        for execution_id in [*other.recovered, *other.paused]:
            self.refused.pop(execution_id, None)
        self.refused.update(other.refused)

    def __str__(self) -> str:
        return (
            f"recovered {len(self.recovered)}, paused {len(self.paused)}, failed {len(self.failed)}, "
            f"skipped {len(self.skipped)}, not served {len(self.not_served)}"
        )


def recorded_agent_name(head: ExecutionRecord) -> str | None:
    """The name of the agent an execution was recorded under (what workers route by)."""
    if head.task.agent_name is not None:
        return head.task.agent_name
    return head.identity.agent_name if head.identity is not None else None


def _agent_name(agent: Any) -> str | None:
    name = getattr(agent, "name", None)
    if name is None and _is_facade(agent):
        return "perdure"  # an unnamed perdure Agent runs its tasks as the pydantic-ai agent "perdure"
    return name


class AgentNotServedError(Exception):
    """The resolver has no agent for this execution's recorded agent name (the operations report it)."""


async def resolve_agent(resolver: AgentResolver, head: ExecutionRecord) -> Any:
    """The agent to resume `head` with; raises `AgentNotServedError` when this resolver does not serve it."""
    name = recorded_agent_name(head)
    if isinstance(resolver, PydanticAgent) or _is_facade(resolver) or _is_workflow(resolver):
        resolver = [resolver]
    if isinstance(resolver, list | tuple):
        for agent in resolver:
            if _agent_name(agent) == name:
                return agent
        raise AgentNotServedError(name)
    if isinstance(resolver, Mapping):
        agent = resolver.get(name) if name is not None else None
        if agent is None:
            raise AgentNotServedError(name)
        return agent
    if callable(resolver):
        agent = resolver(head)
        if inspect.isawaitable(agent):
            agent = await agent
        if agent is None:
            raise AgentNotServedError(name)
        return agent
    raise UserError(
        f"Cannot recover with {resolver!r}: pass a perdure Agent, a pydantic-ai Agent with "
        f"PerdureDurability, a list of them, a mapping {{agent_name: agent}} or a callable (head) -> agent."
    )


def _is_facade(obj: Any) -> bool:
    """A perdure `Agent` (duck-typed: perdure.agent sits above perdure.durable and is not imported)."""
    return not isinstance(obj, PydanticAgent) and callable(getattr(obj, "resume_factory", None))


def _is_workflow(obj: Any) -> bool:
    """A perdure workflow (duck-typed: perdure.workflows sits above perdure.durable)."""
    return callable(getattr(obj, "dump_args", None)) and callable(getattr(obj, "fn", None))


def _factory(agent: Any, execution_id: str) -> AgentFactory:
    if isinstance(agent, PydanticAgent):
        target = ResumeTarget(agent)
        return lambda head: target
    if _is_facade(agent):
        factory: AgentFactory = agent.resume_factory()
        return factory
    raise UserError(
        f"The agent resolver returned {agent!r} for execution {execution_id!r}: expected a perdure "
        f"Agent or a pydantic-ai Agent with PerdureDurability."
    )


async def resume_leased(
    storage: DurableExecutionStorage,
    agent: Any,
    head: ExecutionRecord,
    owner: str,
    options: RecoveryOptions,
) -> bool:
    """Resume `head` (leased by `owner`) with `agent`; return whether it ended paused."""
    execution_id = head.execution_id
    handle = ExecutionHandle(
        storage,
        execution_id=execution_id,
        worker_id=owner,
        lease_ttl=options.lease_ttl,
        auto_cleanup=False,
        debug=bool(getattr(agent, "debug", False)),
    )
    if head.task.workflow is not None:
        from ..workflows._engine import execute_workflow  # the layer above; imported when needed

        workflow = agent if _is_workflow(agent) else None  # None: the registered one of that name
        await execute_workflow(handle, workflow, allow_changes=options.allow_changes, leased_head=head)
        return False
    attempt = await handle.execute_async(
        _factory(agent, execution_id), allow_changes=options.allow_changes, leased_head=head
    )
    return attempt.paused


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
    reason = "deleted" if current is None else not_eligible(current, options)
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
    reason = not_eligible(head.model_copy(update={"lease_owner": None}), options)
    if reason is not None:
        report.skipped[execution_id] = reason
        return report
    if head.attempts >= options.max_attempts:
        if head.status is not ExecutionStatus.SUCCESS:
            report.skipped[execution_id] = f"max attempts reached ({head.attempts})"
            return report
        error = RecoveryGaveUpError(execution_id, head.attempts)
        await storage.save_state_async(head.failed(error))
        logger.error("[%s] %s", execution_id, error)
        report.failed[execution_id] = f"gave up after {head.attempts} attempts"
        return report
    try:
        agent = await resolve_agent(agent_resolver, head)
    except AgentNotServedError:
        name = recorded_agent_name(head)
        logger.info("[%s] left alone: this worker serves no agent named %r", execution_id, name)
        report.not_served[execution_id] = str(name)
        return report
    except Exception as exc:
        logger.error("[%s] agent resolver failed: %s", execution_id, exc)
        report.failed[execution_id] = f"agent resolver failed: {type(exc).__name__}: {exc}"
        return report
    logger.info(
        "[%s] recovering (attempt %d, step %d %s)",
        execution_id,
        head.attempts + 1,
        head.step_index,
        head.step_name or "-",
    )
    resume = resume_leased(storage, agent, head, owner, options)
    try:
        paused = await (resume if options.timeout is None else asyncio.wait_for(resume, options.timeout))
    except TimeoutError:
        logger.error("[%s] recovery timed out after %ss; cancelled", execution_id, options.timeout)
        report.failed[execution_id] = f"timed out after {options.timeout}s (cancelled; journal intact)"
    except ExecutionCompletedError:
        report.skipped[execution_id] = "already completed"
    except ExecutionCancelledError as exc:  # an operator cancelled it; it stopped at a unit boundary
        logger.info("[%s] %s", execution_id, exc)
        report.skipped[execution_id] = "cancelled"
    except ExecutionLeasedError as exc:
        report.skipped[execution_id] = f"leased by {exc.owner}"
    except ExecutionNotFoundError:
        report.skipped[execution_id] = "deleted"
    except NonIdempotentReplayError as exc:
        logger.warning("[%s] paused: %s", execution_id, exc)
        report.paused.append(execution_id)
    except _REFUSALS as exc:
        # Refused before anything ran (code that does not match the journal, a record naming code
        # this program did not register, a damaged journal): the head is unchanged, and resuming
        # it again with the same program cannot help. Reported as failed, and remembered by workers.
        logger.error("[%s] refused: %s: %s", execution_id, type(exc).__name__, exc)
        report.failed[execution_id] = f"refused: {type(exc).__name__}: {exc}"
        report.refused[execution_id] = head.updated_at
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
    allow_changes: Iterable[str] = (),
    options: RecoveryOptions | None = None,
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
        allow_changes: Identity differences the resumes accept on purpose (`"tools"`, `"output"`,
            `"instructions"`, `"prompt"`); see `perdure.durable.identity`.
        options: All the settings above at once, as a `RecoveryOptions` (what `Worker` and the CLI
            use); when given, the individual arguments are ignored.

    Returns:
        A `RecoveryReport` of this pass.

    """
    if concurrency < 1:
        raise UserError(f"concurrency must be >= 1, got {concurrency!r}.")
    options = options or RecoveryOptions(
        max_attempts=max_attempts,
        delay=delay,
        timeout=timeout,
        lease_ttl=lease_ttl,
        worker_id=worker_id,
        min_idle=min_idle,
        statuses=tuple(statuses),  # type: ignore[arg-type]  # validated and converted by RecoveryOptions
        allow_changes=normalize_allow_changes(allow_changes),
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
