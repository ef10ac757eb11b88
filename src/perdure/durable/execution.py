"""`DurableExecution`: the seed API's handle on one execution and on a storage's executions.

It runs any pydantic-ai agent that carries `PerdureDurability` as a journaled execution
(`run_agent_async` / `resume_agent_async`), and answers the management questions of the seed API:
`get_execution_info`, `list_all_executions`, cleanup and deletion.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.agent import AgentRunResult
from pydantic_ai.durable_exec import replay_scope
from pydantic_core import to_jsonable_python

from .._sync import run_sync
from ..errors import ExecutionCompletedError, ExecutionNotFoundError, PerdureError, UserError
from ..records import (
    ExecutionRecord,
    ExecutionStatus,
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
from .journal import JournalRun, response_tokens

__all__ = ["AttemptResult", "DurableExecution"]

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
    """What one attempt of an execution produced, with the journal statistics of that attempt."""

    def __init__(self, result: AgentRunResult[OutputT], head: ExecutionRecord) -> None:
        self.result = result
        self.head = head

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

    """

    def __init__(
        self,
        storage: DurableExecutionStorage | None = None,
        *,
        auto_cleanup: bool = True,
        debug: bool = False,
        execution_id: str | None = None,
    ) -> None:
        self.storage: DurableExecutionStorage = storage if storage is not None else InMemoryDurableStorage()
        self.auto_cleanup = auto_cleanup
        self.debug = debug
        self.execution_id: str = execution_id or new_execution_id()
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
        **run_kwargs: Any,
    ) -> AttemptResult[Any]:
        """Run `agent` on `prompt` as execution `self.execution_id`, resuming it if it exists.

        Args:
            agent: A pydantic-ai agent with `PerdureDurability` among its capabilities.
            prompt: The user prompt; stored with the execution so another process can resume it.
            task: What to store about the task (tools, output type, model) for a later resume.
            on_unit: Observer called after every durable unit with `(step, replayed)`.
            **run_kwargs: Passed to `agent.run` (`output_type`, `deps`, `usage_limits`, ...).

        """
        head = await self.storage.load_state_async(self.execution_id)
        if head is None:
            snapshot = task or TaskSnapshot(description=prompt, agent_name=agent.name)
            if not snapshot.description:
                snapshot = snapshot.model_copy(update={"description": prompt})
            head = ExecutionRecord(execution_id=self.execution_id, task=snapshot)
        return await self._attempt(agent, head, prompt, on_unit=on_unit, run_kwargs=run_kwargs)

    async def resume_agent_async(
        self,
        agent: PydanticAgent[Any, Any],
        *,
        on_unit: Callable[[StepRecord, bool], None] | None = None,
        **run_kwargs: Any,
    ) -> AttemptResult[Any]:
        """Resume execution `self.execution_id` with `agent`, replaying its journal first."""
        head = await self.load_head_async()
        if head.status is ExecutionStatus.COMPLETED:
            raise ExecutionCompletedError(self.execution_id)
        return await self._attempt(agent, head, head.task.description, on_unit=on_unit, run_kwargs=run_kwargs)

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
        head: ExecutionRecord,
        prompt: str,
        *,
        on_unit: Callable[[StepRecord, bool], None] | None,
        run_kwargs: dict[str, Any],
    ) -> AttemptResult[Any]:
        if PerdureDurability.from_agent(agent) is None:
            raise UserError(
                f"Agent {agent.name!r} is not durable: create it with "
                f"`capabilities=[PerdureDurability()]` (from perdure.durable) to run execution "
                f"{self.execution_id!r}, or use perdure.Agent."
            )
        if head.status is ExecutionStatus.COMPLETED:
            raise ExecutionCompletedError(head.execution_id)
        if head.status is ExecutionStatus.CANCELLED:
            raise PerdureError(
                f"Execution {head.execution_id!r} was cancelled; it is not resumed. Start a new execution "
                f"to run the task again.",
                execution_id=head.execution_id,
            )
        journal = await self.storage.load_steps_async(head.execution_id)
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
        run = JournalRun(self.storage, head, journal, debug=self.debug)
        run.on_unit = on_unit
        token = run.activate()
        try:
            with replay_scope():
                result = await agent.run(prompt, run_id=head.execution_id, **run_kwargs)
        except Exception as exc:
            try:
                await run.mark_failed(exc)
            except Exception:  # the storage may be what failed; the original error matters more
                logger.exception("[%s] could not record the failure", head.execution_id)
            raise
        finally:
            JournalRun.deactivate(token)
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
