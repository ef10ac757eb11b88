"""The engine: one entry point that starts or resumes an execution, one attempt at a time.

`ExecutionHandle.execute_async(factory, ...)` is what every way of running an execution comes down
to (`DurableExecution.run_agent` / `resume_agent`, the `Agent` facade's `do` / `continue_durable` /
`continue_run`, recovery and the worker). Per attempt it takes the lease (which loads the head
once), asks the factory for the agent, checks the agent against the execution's recorded identity
(`perdure.durable.identity`) and the journal against the head, then replays the journal and runs live
from where it stopped, renewing the lease while any unit runs, threads included.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.agent import AgentRunResult
from pydantic_ai.durable_exec import replay_scope
from pydantic_ai.exceptions import UserError as PydanticAIUserError
from pydantic_ai.messages import ModelMessagesTypeAdapter
from pydantic_ai.tools import DeferredToolRequests
from pydantic_core import to_jsonable_python

from .. import _faults
from .._sync import run_sync
from ..codec import json_data
from ..errors import (
    CorruptRecordError,
    ExecutionAborted,
    ExecutionCompletedError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    IdentityError,
    LeaseLostError,
    NonIdempotentReplayError,
    PerdureError,
    StorageNotFoundError,
    UserError,
)
from ..records import (
    ExecutionRecord,
    ExecutionStatus,
    PendingCall,
    PendingDecision,
    ReplayStats,
    StepKind,
    StepRecord,
    TaskSnapshot,
    UsageTotals,
    new_execution_id,
)
from ..storage.base import DurableExecutionStorage
from ..storage.memory import InMemoryDurableStorage
from .capability import PerdureDurability
from .decisions import ApprovalDecision, ToolResolution, approvals_from_json, approvals_to_json
from .identity import agent_identity, check_identity, normalize_allow_changes
from .journal import JournalRun, pending_call, response_tokens
from .keys import round_key, started_units
from .leases import DEFAULT_LEASE_TTL, acquire_lease, default_worker_id, heartbeat, owner_is_dead

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
        storage: Where the head record and the journal live; in-memory when omitted.
        auto_cleanup: Delete the execution's records once it completed (the seed's default).
        debug: Log every checkpoint and recovery step via the `perdure` logger.
        execution_id: Reuse a known id instead of generating `YYYYmmddHHMMSS-xxxxxxxx`.
        worker_id: Lease owner id of this handle (default `host:pid:random`).
        lease_ttl: Seconds the execution's lease lasts without a heartbeat; a worker that dies is
            detected (and its execution recoverable) after this long.
        wait_for_lease: Seconds to wait for another worker's lease instead of raising
            `ExecutionLeasedError` at once (None: do not wait).

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
        lease_ttl: float = DEFAULT_LEASE_TTL,
        wait_for_lease: float | None = None,
    ) -> None:
        if not lease_ttl > 0:
            raise UserError(f"lease_ttl must be > 0 seconds, got {lease_ttl!r}.")
        self.storage: DurableExecutionStorage = storage if storage is not None else InMemoryDurableStorage()
        self.auto_cleanup = auto_cleanup
        self.debug = debug
        self.execution_id: str = execution_id or new_execution_id()
        self.worker_id = worker_id or default_worker_id()
        self.lease_ttl = float(lease_ttl)
        self.wait_for_lease = wait_for_lease
        self._completed = False
        if debug:
            enable_debug_logging()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(execution_id={self.execution_id!r}, storage={self.storage!r})"

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
            **run_kwargs: Passed to `agent.run` (`deps`, `usage_limits`, `model`, ...).

        """
        snapshot = task or TaskSnapshot(description=prompt, agent_name=agent.name)
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
        if head.status is ExecutionStatus.COMPLETED:
            raise ExecutionCompletedError(head.execution_id)
        if head.status is ExecutionStatus.CANCELLED:
            raise PerdureError(
                f"Execution {head.execution_id!r} was cancelled; it is not resumed. Start a new execution "
                f"to run the task again.",
                execution_id=head.execution_id,
            )
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
        if PerdureDurability.from_agent(agent) is None:
            raise UserError(
                f"Agent {agent.name!r} is not durable: create it with "
                f"`capabilities=[PerdureDurability()]` (from perdure.durable) to run execution "
                f"{head.execution_id!r}, or use perdure.Agent."
            )
        run_prompt = prompt if prompt is not None else head.task.description
        identity = check_identity(
            head.execution_id,
            head.identity,
            agent_identity(agent, run_prompt),
            allow,
            attempt=head.attempts + 1,
        )
        journal = await self.storage.load_steps_async(head.execution_id)
        head = _check_journal(self.storage, head, journal)
        _check_decisions(head, journal, approvals, resolutions)
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
        run.on_unit = on_unit
        if approvals is not None and head.pending is not None and head.pending.kind == "approval":
            await _journal_approval_round(run, head.pending, approvals)
        round_input = run.latest_round()
        kwargs = dict(target.run_kwargs)
        if round_input is not None:
            run.round = round_input["round"]
            kwargs["message_history"] = ModelMessagesTypeAdapter.validate_python(round_input["messages"])
            kwargs["deferred_tool_results"] = approvals_from_json(round_input["approvals"])
            user_prompt: str | None = None
        else:
            user_prompt = run_prompt
        token = run.activate()

        def renewed(expires: object) -> None:
            run.head.lease_expires_at = expires  # type: ignore[assignment]

        beat = asyncio.create_task(
            heartbeat(self.storage, head.execution_id, self.worker_id, self.lease_ttl, renewed)
        )
        try:
            with replay_scope(), PydanticAgent.using_thread_executor(run.threads):
                result = await agent.run(user_prompt, run_id=head.execution_id, **kwargs)
        except IdentityError:
            raise  # refused before anything ran: the head stays as it was
        except NonIdempotentReplayError as exc:
            pending = PendingDecision(kind="non_idempotent", calls=[pending_call(exc)], round=run.round)
            await _record_end(run.mark_paused(pending, exc), head.execution_id)
            raise
        except ExecutionAborted as exc:
            await _record_end(run.mark_cancelled(exc), head.execution_id)
            raise
        except PydanticAIUserError as exc:
            error = _explain_unregistered_model(exc, head.execution_id, kwargs)
            await _record_end(run.mark_failed(error), head.execution_id)
            if error is exc:
                raise
            raise error from None
        except Exception as exc:
            await _record_end(run.mark_failed(exc), head.execution_id)
            raise
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            JournalRun.deactivate(token)
        if isinstance(result.output, DeferredToolRequests):
            await run.mark_paused(_approval_pending(result, run.round))
            return AttemptResult(result, run.head)
        await run.mark_completed(to_jsonable_python(result.output))
        self._completed = True
        if self.auto_cleanup:
            await self.storage.delete_state_async(head.execution_id, force=True)
        return AttemptResult(result, run.head)


async def _record_end(write: Any, execution_id: str) -> None:
    try:
        await write
    except Exception:  # the storage may be what failed; the original error matters more
        logger.exception("[%s] could not record the end of the attempt", execution_id)


def _interrupted_calls(journal: list[StepRecord]) -> list[str]:
    """Tool call ids with a `started` marker and no journaled result: interrupted mid-effect."""
    done = {s.key for s in journal if s.kind is StepKind.TOOL_CALL}
    started = [
        s.result.get("tool_call_id")
        for s in journal
        if s.kind is StepKind.STARTED
        and isinstance(s.result, dict)
        and not any(unit in done for unit in started_units(s.key))
    ]
    return list(dict.fromkeys(i for i in started if isinstance(i, str)))


def _check_decisions(
    head: ExecutionRecord,
    journal: list[StepRecord],
    approvals: Mapping[str, ApprovalDecision] | None,
    resolutions: dict[str, ToolResolution],
) -> None:
    """Refuse a resume that cannot continue: a pause needs its decisions, decisions need a pause.

    Resolutions are accepted for any call the journal shows as interrupted, so an operator who
    already checked the external system can resolve right after the crash, without a resume that
    first stops as `paused`.
    """
    pending = head.pending if head.status is ExecutionStatus.PAUSED else None
    ids = [c.tool_call_id for c in pending.calls] if pending is not None else []
    if approvals is not None:
        if pending is None or pending.kind != "approval":
            raise UserError(
                f"Execution {head.execution_id!r} is not waiting for approvals (status {head.status.value}); "
                f"resume it without approvals=."
            )
        missing = [i for i in ids if i not in approvals]
        unknown = [i for i in approvals if i not in ids]
        if missing or unknown:
            raise UserError(
                f"Execution {head.execution_id!r} waits for approval of calls {ids}; "
                f"missing decisions for {missing}, unknown call ids {unknown}."
            )
    elif pending is not None and pending.kind == "approval":
        calls = ", ".join(f"{c.tool_name}({c.tool_call_id}, args={c.args!r})" for c in pending.calls)
        raise UserError(
            f"Execution {head.execution_id!r} is paused waiting for approval of: {calls}. Resume it with "
            f"approvals={{call_id: True | False | override_args}}."
        )
    if resolutions:
        interrupted = _interrupted_calls(journal)
        unknown_res = [i for i in resolutions if i not in interrupted]
        if unknown_res:
            raise UserError(
                f"Execution {head.execution_id!r} has no interrupted non-idempotent call {unknown_res}; "
                f"interrupted: {interrupted or 'none'}."
            )


def _approval_pending(result: AgentRunResult[Any], round_no: int) -> PendingDecision:
    requests: DeferredToolRequests = result.output
    calls = [
        PendingCall(tool_call_id=c.tool_call_id, tool_name=c.tool_name, args=c.args_as_dict())
        for c in requests.approvals
    ]
    # pydantic-ai refuses a `message_history` that already carries the run's `run_id`, and every
    # round runs with run_id = the execution id (stable idempotency keys): store the history without it.
    messages = [
        {**m, "run_id": None}
        for m in ModelMessagesTypeAdapter.dump_python(result.all_messages(), mode="json")
    ]
    return PendingDecision(kind="approval", calls=calls, round=round_no, messages=messages)


async def _journal_approval_round(
    run: JournalRun, pending: PendingDecision, approvals: Mapping[str, ApprovalDecision]
) -> None:
    """Journal the decisions with the history they continue, before the next round runs."""
    round_no = pending.round + 1
    await run.append_decision(
        round_key(round_no),
        "approval",
        {
            "round": round_no,
            "messages": pending.messages or [],
            "approvals": approvals_to_json(dict(approvals)),
        },
    )


def _fixed(agent: PydanticAgent[Any, Any], run_kwargs: dict[str, Any]) -> AgentFactory:
    """A factory that always returns `agent` (run with `run_kwargs`)."""
    target = ResumeTarget(agent, dict(run_kwargs))
    return lambda head: target


def _explain_unregistered_model(
    exc: PydanticAIUserError, execution_id: str, kwargs: Mapping[str, Any]
) -> BaseException:
    """pydantic-ai refuses a `model=` instance its durability capability does not know: say what to pass."""
    if "not registered" not in str(exc) or "model" not in str(exc).lower():
        return exc
    model = kwargs.get("model")
    return UserError(
        f"Execution {execution_id!r}: the model passed with run_agent(..., model={model!r}) is not one the "
        f"agent's durability knows, so its requests could not be journaled. Register the instance when you "
        f"create the agent: capabilities=[PerdureDurability(models=[that_model])] (the agent's own model "
        f"is registered already), then pass the same instance again. (pydantic-ai: {exc})",
        execution_id=execution_id,
    )


def _check_journal(
    storage: DurableExecutionStorage, head: ExecutionRecord, journal: list[StepRecord]
) -> ExecutionRecord:
    """Accept the journal only if it matches the head, or leads it by the backend's crash window.

    A journal shorter than the head lost entries (a deleted row, a lost last line, a damaged page):
    replaying it would run the lost units again, so it is `CorruptRecordError` and nothing runs. A
    journal longer than the head is the file backend's one legitimate crash window (the entry is
    appended before the head is replaced); anything beyond that window is corruption too.
    """
    count = len(journal)
    if count == head.next_seq:
        return head
    if count < head.next_seq:
        missing = f"{count}" if head.next_seq - count == 1 else f"{count}..{head.next_seq - 1}"
        raise CorruptRecordError(
            head.execution_id,
            f"the head counts {head.next_seq} journal entries but the journal holds {count}: entries "
            f"{missing} are missing, so the units they recorded would run again",
            step=missing,
        )
    if count - head.next_seq <= storage.journal_may_lead_head:
        return _reconcile(head, journal)
    raise CorruptRecordError(
        head.execution_id,
        f"the journal holds {count} entries but the head counts {head.next_seq}; the "
        f"{storage.backend_name} backend can leave at most {storage.journal_may_lead_head} extra entries "
        f"after a crash",
    )


def _reconcile(head: ExecutionRecord, journal: list[StepRecord]) -> ExecutionRecord:
    """Rebuild the head's journal-derived fields when the journal is ahead of it.

    The file backend appends (and fsyncs) the journal entry before it replaces the head, so a crash
    between the two leaves one more journal entry than the head counts. The journal is the source of
    truth: its result must be replayed, and the next entry must get the next free sequence number.
    """
    responses = [response_tokens(s.result) for s in journal if s.kind is StepKind.MODEL_REQUEST]
    usage = UsageTotals(
        requests=len(responses),
        input_tokens=sum(t[0] for t in responses),
        output_tokens=sum(t[1] for t in responses),
        tool_calls=sum(1 for s in journal if s.kind is StepKind.TOOL_CALL),
    )
    last = journal[-1] if journal else None
    logger.warning(
        "[%s] head counted %d journal steps but the journal holds %d; continuing from the journal",
        head.execution_id,
        head.next_seq,
        len(journal),
    )
    return head.model_copy(
        update={
            "next_seq": len(journal),
            "step_index": last.seq if last else -1,
            "step_name": last.name if last else "",
            "usage": usage,
        }
    )
