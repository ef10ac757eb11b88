"""`DurableExecution`: the seed API's handle on one execution and on a storage's executions.

It runs any pydantic-ai agent that carries `PerdureDurability` as a journaled execution
(`run_agent_async` / `resume_agent_async`), and answers the management questions of the seed API:
`get_execution_info`, `list_all_executions`, cleanup and deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.agent import AgentRunResult
from pydantic_ai.durable_exec import replay_scope
from pydantic_ai.messages import ModelMessagesTypeAdapter
from pydantic_ai.tools import DeferredToolRequests
from pydantic_core import to_jsonable_python

from .._sync import run_sync
from ..errors import (
    ExecutionCompletedError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    LeaseLostError,
    NonIdempotentReplayError,
    PerdureError,
    StorageUnavailableError,
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
    utcnow,
)
from ..storage.base import DurableExecutionStorage
from ..storage.memory import InMemoryDurableStorage
from .capability import PerdureDurability
from .decisions import ApprovalDecision, ToolResolution, approvals_from_json, approvals_to_json
from .journal import ExecutionAborted, JournalRun, pending_call, response_tokens

__all__ = ["AttemptResult", "DurableExecution", "default_worker_id", "owner_is_dead"]

DEFAULT_LEASE_TTL = 30.0
"""Seconds a lease lasts without renewal; the heartbeat renews it every third of that."""


def default_worker_id() -> str:
    """`host:pid:random`, unique per DurableExecution so two in one process do not share a lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """Whether a lease owner id names a process of this host that no longer exists.

    Such a lease can be taken over at once instead of waiting for it to expire: `kill -9` of a
    worker followed by a resume on the same machine is the common case. Owners on other hosts (or in
    an unknown format) are never judged dead; their leases expire.
    """
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


logger = logging.getLogger("perdure")

OutputT = TypeVar("OutputT")
_F = TypeVar("_F", bound=Callable[..., Any])


def enable_debug_logging() -> None:
    """Show perdure's checkpoint and recovery log lines when the application configured none."""
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s perdure %(levelname)s %(message)s"))
        logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


class _HybridMethod(Generic[_F]):
    """A method callable on the class (`DurableExecution.f(id, storage)`) or an instance (`d.f()`)."""

    def __init__(self, func: _F) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        func = self.func

        def bound(*args: Any, **kwargs: Any) -> Any:
            return func(objtype if obj is None else obj, *args, **kwargs)

        bound.__doc__ = func.__doc__
        return bound


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


class DurableExecution:
    """A durable execution bound to a storage backend.

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
        if debug:
            enable_debug_logging()

    def __repr__(self) -> str:
        return f"DurableExecution(execution_id={self.execution_id!r}, storage={self.storage!r})"

    # ---- running agents ---------------------------------------------------------------------------

    async def run_agent_async(
        self,
        agent: PydanticAgent[Any, Any],
        prompt: str,
        *,
        task: TaskSnapshot | None = None,
        on_unit: Callable[[StepRecord, bool], None] | None = None,
        metadata: Mapping[str, Any] | None = None,
        **run_kwargs: Any,
    ) -> AttemptResult[Any]:
        """Run `agent` on `prompt` as execution `self.execution_id`, resuming it if it exists.

        Args:
            agent: A pydantic-ai agent with `PerdureDurability` among its capabilities.
            prompt: The user prompt; stored with the execution so another process can resume it.
            task: What to store about the task (tools, output type, model) for a later resume.
            on_unit: Observer called after every durable unit with `(step, replayed)`.
            metadata: JSON data stored with a new execution (tenant, session, user, ...).
            **run_kwargs: Passed to `agent.run` (`output_type`, `deps`, `usage_limits`, ...).

        """
        head = await self.storage.load_state_async(self.execution_id)
        if head is None:
            snapshot = task or TaskSnapshot(description=prompt, agent_name=agent.name)
            if not snapshot.description:
                snapshot = snapshot.model_copy(update={"description": prompt})
            head = ExecutionRecord(
                execution_id=self.execution_id,
                task=snapshot,
                metadata=to_jsonable_python(dict(metadata or {})),
            )
            try:
                await self.storage.save_state_async(head)
            except LeaseLostError as exc:  # another worker created and leased it meanwhile
                raise ExecutionLeasedError(self.execution_id, exc.holder or "?", None) from exc
        return await self._attempt(agent, prompt, on_unit=on_unit, run_kwargs=run_kwargs)

    async def resume_agent_async(
        self,
        agent: PydanticAgent[Any, Any],
        *,
        on_unit: Callable[[StepRecord, bool], None] | None = None,
        approvals: Mapping[str, ApprovalDecision] | None = None,
        resolutions: Mapping[str, ToolResolution | str] | None = None,
        **run_kwargs: Any,
    ) -> AttemptResult[Any]:
        """Resume execution `self.execution_id` with `agent`, replaying its journal first.

        Args:
            agent: The same agent (same tools, same output type) the execution ran with.
            on_unit: Observer called after every durable unit with `(step, replayed)`.
            approvals: Decisions for a run paused on tools that require approval, by tool call id:
                `True`, `False`, a dict of override arguments, or a denial message.
            resolutions: Decisions for non-idempotent calls that were interrupted mid-effect, by tool
                call id: `ToolResolution.done(result)`, `.rerun()` or `.abort()`.
            **run_kwargs: Passed to `agent.run`.

        """
        head = await self.load_head_async()
        if head.status is ExecutionStatus.COMPLETED:
            raise ExecutionCompletedError(self.execution_id)
        return await self._attempt(
            agent,
            head.task.description,
            on_unit=on_unit,
            run_kwargs=run_kwargs,
            approvals=approvals,
            resolutions=resolutions,
        )

    def run_agent(self, agent: PydanticAgent[Any, Any], prompt: str, **kwargs: Any) -> AttemptResult[Any]:
        """Sync twin of `run_agent_async`."""
        return run_sync(self.run_agent_async(agent, prompt, **kwargs))

    def resume_agent(self, agent: PydanticAgent[Any, Any], **kwargs: Any) -> AttemptResult[Any]:
        """Sync twin of `resume_agent_async`."""
        return run_sync(self.resume_agent_async(agent, **kwargs))

    async def load_head_async(self) -> ExecutionRecord:
        """The head record of this execution; `ExecutionNotFoundError` when it does not exist."""
        head = await self.storage.load_state_async(self.execution_id)
        if head is None:
            raise ExecutionNotFoundError(self.execution_id, backend=self.storage.backend_name)
        return head

    async def _attempt(
        self,
        agent: PydanticAgent[Any, Any],
        prompt: str,
        *,
        on_unit: Callable[[StepRecord, bool], None] | None,
        run_kwargs: dict[str, Any],
        approvals: Mapping[str, ApprovalDecision] | None = None,
        resolutions: Mapping[str, ToolResolution | str] | None = None,
    ) -> AttemptResult[Any]:
        if PerdureDurability.from_agent(agent) is None:
            raise UserError(
                f"Agent {agent.name!r} is not durable: create it with "
                f"`capabilities=[PerdureDurability()]` (from perdure.durable) to run execution "
                f"{self.execution_id!r}, or use perdure.Agent."
            )
        head = await self._acquire_lease()
        try:
            return await self._leased_attempt(
                agent,
                head,
                prompt,
                on_unit=on_unit,
                run_kwargs=run_kwargs,
                approvals=approvals,
                resolutions={k: ToolResolution.coerce(v, k) for k, v in (resolutions or {}).items()},
            )
        finally:
            try:
                await self.storage.release_lease_async(self.execution_id, self.worker_id)
            except Exception:  # an expiring lease is the fallback; never mask the run's outcome
                logger.warning("[%s] could not release the lease", self.execution_id, exc_info=True)

    async def _acquire_lease(self) -> ExecutionRecord:
        deadline = None if self.wait_for_lease is None else time.monotonic() + self.wait_for_lease
        while True:
            try:
                return await self.storage.acquire_lease_async(
                    self.execution_id, self.worker_id, self.lease_ttl
                )
            except ExecutionLeasedError as exc:
                if owner_is_dead(exc.owner):
                    logger.warning(
                        "[%s] taking over the lease of %s: that process of this host no longer exists",
                        self.execution_id,
                        exc.owner,
                    )
                    try:
                        return await self.storage.acquire_lease_async(
                            self.execution_id, self.worker_id, self.lease_ttl, steal_from=exc.owner
                        )
                    except ExecutionLeasedError:  # someone else took it over first
                        pass
                if deadline is None or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(min(0.25, self.lease_ttl / 4))

    async def _heartbeat(self, run: JournalRun) -> None:
        """Renew the lease while the attempt runs; stop when it was lost (the fence then stops writes)."""
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                expires = await self.storage.renew_lease_async(
                    self.execution_id, self.worker_id, self.lease_ttl
                )
                run.head.lease_expires_at = expires
            except LeaseLostError as exc:
                logger.error("[%s] %s", self.execution_id, exc)
                return
            except (StorageUnavailableError, OSError) as exc:
                logger.warning("[%s] lease renewal failed, will retry: %s", self.execution_id, exc)

    async def _leased_attempt(
        self,
        agent: PydanticAgent[Any, Any],
        head: ExecutionRecord,
        prompt: str,
        *,
        on_unit: Callable[[StepRecord, bool], None] | None,
        run_kwargs: dict[str, Any],
        approvals: Mapping[str, ApprovalDecision] | None,
        resolutions: dict[str, ToolResolution],
    ) -> AttemptResult[Any]:
        if head.status is ExecutionStatus.COMPLETED:
            raise ExecutionCompletedError(head.execution_id)
        if head.status is ExecutionStatus.CANCELLED:
            raise PerdureError(
                f"Execution {head.execution_id!r} was cancelled; it is not resumed. Start a new execution "
                f"to run the task again.",
                execution_id=head.execution_id,
            )
        journal = await self.storage.load_steps_async(head.execution_id)
        _check_decisions(head, journal, approvals, resolutions)
        if len(journal) != head.next_seq:
            head = _reconcile(head, journal)
        resuming = head.attempts > 0
        head = head.model_copy(
            update={
                "attempts": head.attempts + 1,
                "replay": ReplayStats(resumes=head.replay.resumes + (1 if resuming else 0)),
                "updated_at": utcnow(),
            }
        )
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
        await self.storage.save_state_async(head)
        run = JournalRun(self.storage, head, journal, debug=self.debug, resolutions=resolutions)
        run.on_unit = on_unit
        if approvals is not None and head.pending is not None and head.pending.kind == "approval":
            await _journal_approval_round(run, head.pending, approvals)
        round_input = run.latest_round()
        kwargs = dict(run_kwargs)
        if round_input is not None:
            run.round = round_input["round"]
            kwargs["message_history"] = ModelMessagesTypeAdapter.validate_python(round_input["messages"])
            kwargs["deferred_tool_results"] = approvals_from_json(round_input["approvals"])
            user_prompt: str | None = None
        else:
            user_prompt = prompt
        token = run.activate()
        heartbeat = asyncio.create_task(self._heartbeat(run))
        try:
            with replay_scope():
                result = await agent.run(user_prompt, run_id=head.execution_id, **kwargs)
        except NonIdempotentReplayError as exc:
            pending = PendingDecision(kind="non_idempotent", calls=[pending_call(exc)], round=run.round)
            await _record_end(run.mark_paused(pending, exc), head.execution_id)
            raise
        except ExecutionAborted as exc:
            await _record_end(run.mark_cancelled(exc), head.execution_id)
            raise
        except Exception as exc:
            await _record_end(run.mark_failed(exc), head.execution_id)
            raise
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            JournalRun.deactivate(token)
        if isinstance(result.output, DeferredToolRequests):
            await run.mark_paused(_approval_pending(result, run.round))
            return AttemptResult(result, run.head)
        await run.mark_completed(to_jsonable_python(result.output))
        if self.auto_cleanup:
            await self.storage.delete_state_async(head.execution_id)
        return AttemptResult(result, run.head)

    # ---- management (seed API) -----------------------------------------------------------------

    @_HybridMethod
    def get_execution_info(self_or_cls: Any, *args: Any) -> dict[str, Any] | None:
        """Info dict of an execution, or None when it does not exist.

        Call as `DurableExecution.get_execution_info(execution_id, storage)` or, on an instance,
        `durable.get_execution_info()`.
        """
        return run_sync(_info_async(self_or_cls, *args))

    @_HybridMethod
    async def get_execution_info_async(self_or_cls: Any, *args: Any) -> dict[str, Any] | None:
        """Async twin of `get_execution_info`."""
        return await _info_async(self_or_cls, *args)

    @staticmethod
    def list_all_executions(
        storage: DurableExecutionStorage,
        status: ExecutionStatus | str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Info dicts of the storage's executions, most recently updated first."""
        return [head.info() for head in storage.list_executions(status, limit)]

    @staticmethod
    async def list_all_executions_async(
        storage: DurableExecutionStorage,
        status: ExecutionStatus | str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Async twin of `list_all_executions`."""
        return [head.info() for head in await storage.list_executions_async(status, limit)]

    def delete(self) -> bool:
        """Delete this execution's records."""
        return self.storage.delete_state(self.execution_id)

    # ---- recovery ---------------------------------------------------------------------------------

    @staticmethod
    async def recover_interrupted_async(
        storage: DurableExecutionStorage, agent_resolver: Any, **options: Any
    ) -> Any:
        """Resume every interrupted execution whose lease expired; see `perdure.durable.recovery`."""
        from .recovery import recover_interrupted_async

        return await recover_interrupted_async(storage, agent_resolver, **options)

    @staticmethod
    def recover_interrupted(storage: DurableExecutionStorage, agent_resolver: Any, **options: Any) -> Any:
        """Sync twin of `recover_interrupted_async`."""
        return run_sync(DurableExecution.recover_interrupted_async(storage, agent_resolver, **options))


async def _record_end(write: Any, execution_id: str) -> None:
    try:
        await write
    except Exception:  # the storage may be what failed; the original error matters more
        logger.exception("[%s] could not record the end of the attempt", execution_id)


def _interrupted_calls(journal: list[StepRecord]) -> list[str]:
    """Tool call ids with a `started` marker and no journaled result: interrupted mid-effect."""
    done = {s.key.removeprefix("tool:") for s in journal if s.kind is StepKind.TOOL_CALL}
    started = [
        s.result.get("tool_call_id")
        for s in journal
        if s.kind is StepKind.STARTED and isinstance(s.result, dict)
    ]
    return list(dict.fromkeys(i for i in started if isinstance(i, str) and i not in done))


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
        f"round:{round_no}",
        "approval",
        {
            "round": round_no,
            "messages": pending.messages or [],
            "approvals": approvals_to_json(dict(approvals)),
        },
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


async def _info_async(target: Any, *args: Any) -> dict[str, Any] | None:
    if isinstance(target, DurableExecution):
        execution_id = args[0] if args else target.execution_id
        storage = args[1] if len(args) > 1 else target.storage
    else:
        if len(args) != 2:
            raise UserError("Call DurableExecution.get_execution_info(execution_id, storage).")
        execution_id, storage = args
    head = await storage.load_state_async(execution_id)
    return None if head is None else head.info()
