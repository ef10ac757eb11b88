"""The engine: one entry point that starts or resumes an execution, one attempt at a time.

`ExecutionHandle.execute_async(factory, ...)` is what every way of running an execution comes down
to (`DurableExecution.run_agent` / `resume_agent`, the `Agent` facade's `do` / `continue_durable` /
`continue_run`, recovery and the worker). Per attempt it takes the lease (which loads the head
once), asks the factory for the agent, checks the agent against the execution's recorded identity
(`perdure.durable.identity`) and the journal against the head, then replays the journal and runs live
from where it stopped, renewing the lease while any unit runs, threads included.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.agent import AgentRunResult
from pydantic_ai.exceptions import UserError as PydanticAIUserError
from pydantic_ai.tools import DeferredToolRequests
from pydantic_core import to_jsonable_python

from .. import _faults
from .._sync import run_sync
from ..codec import json_data
from ..errors import (
    ExecutionCompletedError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    LeaseLostError,
    StorageNotFoundError,
    UserError,
)
from ..events._bus import Emitter, EventBus, EventStream, Listener
from ..records import (
    ExecutionRecord,
    ExecutionStatus,
    ReplayStats,
    StepRecord,
    TaskSnapshot,
    new_execution_id,
)
from ..settings import settings
from ..storage.base import DurableExecutionStorage
from ..storage.memory import InMemoryDurableStorage
from ..storage.url import storage_from_url
from ._approvals import approval_pending, continue_round, journal_approval_round
from ._attempt_end import attempt_scope, end_cancelled, explain_unregistered_model
from ._cancel import clear_request
from ._operator import recorded_approvals
from ._prechecks import check_decisions, check_durable, check_journal, check_resumable
from .checkpoints import effective_journal
from .decisions import ApprovalDecision, ToolResolution
from .identity import agent_identity, check_identity, normalize_allow_changes
from .journal import JournalRun
from .leases import DEFAULT_LEASE_TTL, acquire_lease, default_worker_id, owner_is_dead

__all__ = [
    "DEFAULT_LEASE_TTL",
    "AgentFactory",
    "AttemptResult",
    "ExecutionHandle",
    "ResumeTarget",
    "default_worker_id",
    "enable_debug_logging",
    "owner_is_dead",
]

logger = logging.getLogger("perdure")

OutputT = TypeVar("OutputT")


def enable_debug_logging() -> None:
    """Show perdure's checkpoint and recovery log lines when the application configured none."""
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s perdure %(levelname)s %(message)s"))
        logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


class AttemptResult(Generic[OutputT]):
    """What one attempt of an execution produced, with the journal statistics of that attempt.

    When the run paused for approvals, `output` is pydantic-ai's `DeferredToolRequests`, `paused`
    is true and `head.pending` lists the calls waiting for a decision.
    """

    def __init__(self, result: AgentRunResult[OutputT], head: ExecutionRecord) -> None:
        self.result = result
        self.head = head

    @property
    def paused(self) -> bool:
        """The run stopped waiting for a human decision."""
        return self.head.status is ExecutionStatus.PAUSED

    @property
    def output(self) -> OutputT:
        """The agent's output."""
        return self.result.output

    @property
    def replay(self) -> ReplayStats:
        """Units of this attempt answered from the journal vs executed."""
        return self.head.replay


@dataclass
class ResumeTarget:
    """What an `AgentFactory` may return: the agent, plus keyword arguments for its `run`."""

    agent: PydanticAgent[Any, Any]
    run_kwargs: dict[str, Any] = field(default_factory=dict)


AgentFactory = Callable[
    [ExecutionRecord],
    "PydanticAgent[Any, Any] | ResumeTarget | Awaitable[PydanticAgent[Any, Any] | ResumeTarget]",
]
"""Execution record in, agent out: how every entry point tells the engine what to run.

`run_agent` and `resume_agent` pass a fixed agent; perdure's `Agent` facade rebuilds one from the
record (its tools and output type found among what the program registered); a worker picks one by
the recorded agent name. The engine calls it once per attempt, with the head it loaded under the
lease, and checks the agent it returns against the execution's identity before anything runs.
"""


class ExecutionHandle:
    """One execution of a storage, and the engine that runs its attempts (see `DurableExecution`).

    Args:
        storage: Where the head record and the journal live. When omitted: the storage
            `PERDURE_STORAGE_URL` names (see `perdure.settings`; opened for this handle, close it
            with `handle.storage.close()`), else in-memory.
        auto_cleanup: Delete the execution's records once it completed (the seed's default).
        debug: Log every checkpoint and recovery step via the `perdure` logger.
        execution_id: Reuse a known id instead of generating `YYYYmmddHHMMSS-xxxxxxxx`.
        worker_id: Lease owner id of this handle (default `host:pid:random`).
        lease_ttl: Seconds the execution's lease lasts without a heartbeat; a worker that dies is
            detected (and its execution recoverable) after this long. Default: `PERDURE_LEASE_TTL`
            (30 s).
        wait_for_lease: Seconds to wait for another worker's lease instead of raising
            `ExecutionLeasedError` at once (None: do not wait).
        on_event: Called with every event of this handle's attempts (`perdure.events`): unit started,
            completed, replayed, retried, failed; execution started, resumed, paused, failed,
            completed, cancelled. May be a coroutine function (scheduled, not awaited). A listener
            that raises is logged once and never breaks the run.

    A handle stands for one execution: once it completed, running it again (another prompt, or the
    same) raises `ExecutionCompletedError`, whether or not `auto_cleanup` deleted its records.

    """

    def __init__(
        self,
        storage: DurableExecutionStorage | None = None,
        *,
        auto_cleanup: bool = True,
        debug: bool = False,
        execution_id: str | None = None,
        worker_id: str | None = None,
        lease_ttl: float | None = None,
        wait_for_lease: float | None = None,
        on_event: Listener | None = None,
    ) -> None:
        if storage is None or lease_ttl is None:
            configured = settings()
            lease_ttl = configured.lease_ttl if lease_ttl is None else lease_ttl
            if storage is None:
                url = configured.storage_url
                storage = storage_from_url(url) if url is not None else InMemoryDurableStorage()
        if not lease_ttl > 0:
            raise UserError(f"lease_ttl must be > 0 seconds, got {lease_ttl!r}.")
        self.storage: DurableExecutionStorage = storage
        self.auto_cleanup = auto_cleanup
        self.debug = debug
        self.execution_id: str = execution_id or new_execution_id()
        self.worker_id = worker_id or default_worker_id()
        self.lease_ttl = float(lease_ttl)
        self.wait_for_lease = wait_for_lease
        self.batch_size = 1
        """Units per storage write (`DurableAgent(checkpoint_every_n_steps=N)`); see `JournalRun`."""
        self._completed = False
        self.event_bus = EventBus()
        """The listeners of this handle's events (`on_event`, `events()`)."""
        if on_event is not None:
            self.event_bus.subscribe(on_event)
        if debug:
            enable_debug_logging()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(execution_id={self.execution_id!r}, storage={self.storage!r})"

    def events(self, *, follow: bool = False) -> EventStream:
        """`async for event in handle.events()`: this handle's events as they happen, in order.

        Listening starts when this is called, so call it before starting the run (for example in a
        task created before `await handle.run_agent_async(...)`). The iteration ends after the event
        that ends the attempt (completed, failed, paused, cancelled) unless `follow=True`.
        """
        return EventStream(self.event_bus, follow=follow)

    # ---- running agents ---------------------------------------------------------------------------

    async def run_agent_async(
        self,
        agent: PydanticAgent[Any, OutputT],
        prompt: str,
        *,
        task: TaskSnapshot | None = None,
        on_unit: Callable[[StepRecord, bool], None] | None = None,
        metadata: Mapping[str, Any] | None = None,
        allow_changes: Iterable[str] | None = None,
        expected_steps: int | None = None,
        **run_kwargs: Any,
    ) -> AttemptResult[OutputT]:
        """Run `agent` on `prompt` as execution `self.execution_id`, resuming it if it exists.

        Args:
            agent: A pydantic-ai agent with `PerdureDurability` among its capabilities.
            prompt: The user prompt; stored with the execution so another process can resume it. An
                existing execution that started with another prompt is refused
                (`JournalMismatchError`) unless `allow_changes` includes `"prompt"`.
            task: What to store about the task (tools, output type, model) for a later resume.
            on_unit: Observer called after every durable unit with `(step, replayed)`.
            metadata: JSON data stored with a new execution (tenant, session, user, ...).
            allow_changes: Identity differences to accept on purpose when the execution exists:
                any of `"tools"`, `"output"`, `"instructions"`, `"prompt"`.
            expected_steps: How many units (model requests and tool calls) the run is expected to
                take, for the completion percentage of `perdure.execution_summary`.
            **run_kwargs: Passed to `agent.run` (`deps`, `usage_limits`, `model`, ...).

        """
        snapshot = task or TaskSnapshot(description=prompt, agent_name=agent.name)
        if expected_steps is not None:
            snapshot = snapshot.model_copy(update={"expected_steps": expected_steps})
        if not snapshot.description:
            snapshot = snapshot.model_copy(update={"description": prompt})
        return await self.execute_async(
            _fixed(agent, run_kwargs),
            prompt=prompt,
            create=snapshot,
            metadata=metadata,
            on_unit=on_unit,
            allow_changes=allow_changes,
        )

    async def resume_agent_async(
        self,
        agent: PydanticAgent[Any, OutputT],
        *,
        on_unit: Callable[[StepRecord, bool], None] | None = None,
        approvals: Mapping[str, ApprovalDecision] | None = None,
        resolutions: Mapping[str, ToolResolution | str] | None = None,
        allow_changes: Iterable[str] | None = None,
        **run_kwargs: Any,
    ) -> AttemptResult[OutputT]:
        """Resume execution `self.execution_id` with `agent`, replaying its journal first.

        Args:
            agent: The same agent (same tools, same output type, same instructions) the execution ran
                with; checked against the execution's recorded identity before anything runs.
            on_unit: Observer called after every durable unit with `(step, replayed)`.
            approvals: Decisions for a run paused on tools that require approval, by tool call id:
                `True`, `False`, a dict of override arguments, or a denial message.
            resolutions: Decisions for non-idempotent calls that were interrupted mid-effect, by tool
                call id: `ToolResolution.done(result)`, `.rerun()` or `.abort()`.
            allow_changes: Identity differences to accept on purpose: any of `"tools"`, `"output"`,
                `"instructions"`, `"prompt"` (logged and recorded in `head.identity.changes`).
            **run_kwargs: Passed to `agent.run`.

        """
        return await self.execute_async(
            _fixed(agent, run_kwargs),
            on_unit=on_unit,
            approvals=approvals,
            resolutions=resolutions,
            allow_changes=allow_changes,
        )

    def run_agent(
        self, agent: PydanticAgent[Any, OutputT], prompt: str, **kwargs: Any
    ) -> AttemptResult[OutputT]:
        """Sync twin of `run_agent_async`."""
        return run_sync(self.run_agent_async(agent, prompt, **kwargs))

    def resume_agent(self, agent: PydanticAgent[Any, OutputT], **kwargs: Any) -> AttemptResult[OutputT]:
        """Sync twin of `resume_agent_async`."""
        return run_sync(self.resume_agent_async(agent, **kwargs))

    async def load_head_async(self) -> ExecutionRecord:
        """The head record of this execution; `ExecutionNotFoundError` when it does not exist."""
        head = await self.storage.load_state_async(self.execution_id)
        if head is None:
            raise self.storage.not_found_error(self.execution_id)
        return head

    async def execute_async(
        self,
        factory: AgentFactory,
        *,
        prompt: str | None = None,
        create: TaskSnapshot | None = None,
        metadata: Mapping[str, Any] | None = None,
        approvals: Mapping[str, ApprovalDecision] | None = None,
        resolutions: Mapping[str, ToolResolution | str] | None = None,
        allow_changes: Iterable[str] | None = None,
        on_unit: Callable[[StepRecord, bool], None] | None = None,
        leased_head: ExecutionRecord | None = None,
    ) -> AttemptResult[Any]:
        """The one entry point for starting and resuming: one attempt of this execution.

        Takes the lease (which loads the head, once), asks `factory` for the agent to run, checks it
        against the execution's identity, replays the journal and runs live from where it stopped.

        Args:
            factory: Execution record in, agent (or `ResumeTarget`) out; sync or async.
            prompt: The user prompt (new runs); resumes use the recorded one.
            create: The task snapshot of a new execution: create it if it does not exist yet.
                Without it a missing execution raises `ExecutionNotFoundError`.
            metadata: JSON data stored with a new execution.
            approvals: See `resume_agent_async`.
            resolutions: See `resume_agent_async`.
            allow_changes: See `resume_agent_async`.
            on_unit: Observer called after every durable unit with `(step, replayed)`.
            leased_head: The head, when the caller already holds this handle's lease (recovery).

        """
        if self._completed:
            raise ExecutionCompletedError(self.execution_id)
        allow = normalize_allow_changes(allow_changes)
        coerced = {k: ToolResolution.coerce(v, k) for k, v in (resolutions or {}).items()}
        head = leased_head
        if head is None:
            head = await self._lease(create, metadata)
        try:
            _faults.point("after_lease_acquire")
            result = await self._leased_attempt(
                factory,
                head,
                prompt,
                on_unit=on_unit,
                approvals=approvals,
                resolutions=coerced,
                allow=allow,
            )
        finally:
            if leased_head is None:
                try:
                    await self.storage.release_lease_async(self.execution_id, self.worker_id)
                except Exception:  # an expiring lease is the fallback; never mask the run's outcome
                    logger.warning("[%s] could not release the lease", self.execution_id, exc_info=True)
        return result

    async def _lease(
        self, create: TaskSnapshot | None, metadata: Mapping[str, Any] | None
    ) -> ExecutionRecord:
        """Take the lease; for a new run, create the execution first (never re-creating a deleted one)."""
        try:
            return await acquire_lease(
                self.storage, self.execution_id, self.worker_id, self.lease_ttl, wait=self.wait_for_lease
            )
        except (ExecutionNotFoundError, StorageNotFoundError):
            if create is None:
                raise
        head = ExecutionRecord(
            execution_id=self.execution_id,
            task=create,
            metadata=json_data(dict(metadata or {}), execution_id=self.execution_id, what="metadata"),
        )
        try:
            _faults.point("before_head_save")
            await self.storage.save_state_async(head)
        except LeaseLostError as exc:  # another worker created and leased it meanwhile
            raise ExecutionLeasedError(self.execution_id, exc.holder or "?", None) from exc
        _faults.point("after_head_save")
        return await acquire_lease(
            self.storage, self.execution_id, self.worker_id, self.lease_ttl, wait=self.wait_for_lease
        )

    async def _leased_attempt(
        self,
        factory: AgentFactory,
        head: ExecutionRecord,
        prompt: str | None,
        *,
        on_unit: Callable[[StepRecord, bool], None] | None,
        approvals: Mapping[str, ApprovalDecision] | None,
        resolutions: dict[str, ToolResolution],
        allow: frozenset[str],
    ) -> AttemptResult[Any]:
        check_resumable(head)
        target = factory(head)
        if inspect.isawaitable(target):
            target = await target
        if isinstance(target, PydanticAgent):
            target = ResumeTarget(target)
        if not isinstance(target, ResumeTarget):
            raise UserError(
                f"The agent factory for execution {head.execution_id!r} returned {target!r}: expected a "
                f"pydantic-ai Agent with PerdureDurability (or a ResumeTarget)."
            )
        agent = target.agent
        check_durable(agent, head.execution_id)
        run_prompt = prompt if prompt is not None else head.task.description
        identity = check_identity(
            head.execution_id,
            head.identity,
            agent_identity(agent, run_prompt),
            allow,
            attempt=head.attempts + 1,
        )
        journal = await self.storage.load_steps_async(head.execution_id)
        head = check_journal(self.storage, head, journal)
        journal = effective_journal(journal)  # without what a rewind superseded
        if approvals is not None:  # with the decisions `perdure approve` / `deny` recorded already
            approvals = {**recorded_approvals(head, journal), **approvals}
        check_decisions(head, journal, approvals, resolutions)
        resuming = head.attempts > 0
        head = head.attempt_started(identity)
        if self.debug and resuming:
            logger.info(
                "[%s] recovering: status=%s at step %d (%s)%s; %d journaled steps will be replayed",
                head.execution_id,
                head.status.value,
                head.step_index,
                head.step_name or "-",
                f", error: {head.error}" if head.error else "",
                len(journal),
            )
        run = JournalRun(
            self.storage, head, journal, debug=self.debug, resolutions=resolutions, allow_changes=allow
        )
        run.batch_size = self.batch_size
        run.on_unit = on_unit
        run.events = Emitter((self.event_bus,))
        await journal_approval_round(run, head.pending, approvals)
        kwargs = dict(target.run_kwargs)
        user_prompt = continue_round(run, kwargs, run_prompt)

        def explain(exc: Exception) -> BaseException:
            if isinstance(exc, PydanticAIUserError):
                return explain_unregistered_model(exc, head.execution_id, kwargs)
            return exc

        async with attempt_scope(run, self.storage, self.worker_id, self.lease_ttl, explain=explain):
            result = await agent.run(user_prompt, run_id=head.execution_id, **kwargs)
        if isinstance(result.output, DeferredToolRequests):
            if run.cancel_requested is not None and await end_cancelled(run, self.storage):
                raise run.cancel_requested  # an operator cancelled it while this round ran
            await run.mark_paused(approval_pending(result, run.round))
            return AttemptResult(result, run.head)
        await run.mark_completed(to_jsonable_python(result.output))
        if run.cancel_requested is not None:  # it finished before reaching a unit boundary
            await clear_request(self.storage, head.execution_id)
        self._completed = True
        if self.auto_cleanup:
            await self.storage.delete_state_async(head.execution_id, force=True)
        return AttemptResult(result, run.head)


def _fixed(agent: PydanticAgent[Any, Any], run_kwargs: dict[str, Any]) -> AgentFactory:
    """A factory that always returns `agent` (run with `run_kwargs`)."""
    target = ResumeTarget(agent, dict(run_kwargs))
    return lambda head: target
