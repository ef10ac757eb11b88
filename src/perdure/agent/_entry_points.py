"""`AgentEntryPoints`: the facade's async entry points, which run and resume tasks durably.

`do_async` runs a task (durably when it has a `DurableExecution` or the agent a `db`);
`continue_durable_async` and `continue_run_async` resume one from its journal. All three make their
attempts through `calls.run_attempts` and leave their outcome on the agent (and task) through
`_record`, also when they raise, so a caller can always recover by run id. The sync twins (`do`,
`continue_durable`, `continue_run`) are derived from these in `perdure.agent.agent.Agent`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, Literal, overload

from pydantic_ai.tools import DeferredToolRequests

from ..durable.decisions import ApprovalDecision, ToolResolution
from ..durable.engine import AgentFactory, ResumeTarget
from ..durable.execution import DurableExecution
from ..errors import ExecutionCompletedError, UserError
from ..records import ExecutionStatus
from ..storage.base import DurableExecutionStorage
from ._calls import Call, load_output, run_attempts
from ._core import AgentCore
from .output import AgentRunOutput
from .task import OutputT, Task
from .tools import ToolLike, requires_approval, resolve_output_type

__all__ = ["AgentEntryPoints", "Approvals", "Resolutions"]

logger = logging.getLogger("perdure")

Approvals = Mapping[str, ApprovalDecision]
"""Decisions for a run paused for approvals, by tool call id."""
Resolutions = Mapping[str, ToolResolution | str]
"""Decisions for interrupted non-idempotent calls, by tool call id."""


class AgentEntryPoints(AgentCore):
    """`AgentCore` plus the async entry points of `perdure.Agent` (see `Agent`)."""

    # ---- running tasks ----------------------------------------------------------------------------

    @overload
    async def do_async(
        self, task: Task[OutputT], *, return_output: Literal[False] = False
    ) -> OutputT | DeferredToolRequests: ...
    @overload
    async def do_async(self, task: Task[OutputT], *, return_output: Literal[True]) -> AgentRunOutput: ...
    async def do_async(self, task: Task[Any], *, return_output: bool = False) -> Any:
        """Run `task` and return its output; a durable task journals every step as it goes.

        Doing a durable task whose execution already exists continues it; one that completed
        returns its stored output without running anything.

        When a tool needs approval, the run ends `paused` and this returns pydantic-ai's
        `DeferredToolRequests` (its `.approvals` are the waiting calls, with `tool_call_id`,
        `tool_name` and `args`); `task.status` is then `paused` and `task.pending` lists the calls.
        Continue with `continue_run(task=task, approvals={call_id: ...})` or
        `continue_durable(task.durable_execution_id, storage, approvals=...)`, from any process.

        Args:
            task: The task to run.
            return_output: Return an `AgentRunOutput` (run id, status, output, usage, replay
                statistics, pending decisions) instead of the bare output.

        Raises:
            NonIdempotentReplayError: The run reached a non-idempotent tool call that an earlier
                process started but never recorded; the execution is `paused` until it is resumed
                with `resolutions=`.

        """
        call = Call()

        async def work() -> AgentRunOutput:
            tools = [*self.tools, *task.tools]
            durable = self._durable_for(task)
            if durable is None:
                return await self._do_plain(task, tools)
            call.run_id, call.storage = durable.execution_id, durable.storage
            return await self._do_durable(task, durable, tools, call)

        out = await self._record(call, task, work())
        return out if return_output else out.output

    async def _do_plain(self, task: Task, tools: Sequence[ToolLike]) -> AgentRunOutput:
        if any(requires_approval(item) for item in tools):
            raise UserError(
                "This task has tools that require approval, but it is not durable: a paused run must be "
                "stored to be continued. Give the task durable_execution=DurableExecution(storage) or "
                "the agent db=SqliteDatabase(...)."
            )
        agent = self._build(
            model=self.model,
            tools=tools,
            output_type=task.response_format,
            instructions=self.instructions,
            durable=False,
        )
        result = await agent.run(task.description, **self._run_kwargs())
        return AgentRunOutput.from_plain_run(result.output, result.usage)

    async def _do_durable(
        self, task: Task, durable: DurableExecution, tools: Sequence[ToolLike], call: Call
    ) -> AgentRunOutput:
        if self.debug and not durable.debug:
            durable.debug = True
        snapshot = self._snapshot(task, tools)
        agent = self._build(
            model=self.model, tools=tools, output_type=task.response_format, instructions=self.instructions
        )
        target = ResumeTarget(agent, self._run_kwargs())
        metadata = self.db.metadata() if self.db is not None else None
        try:
            attempt = await run_attempts(
                durable,
                call,
                lambda head: target,
                lambda: durable.execute_async(
                    lambda head: target, prompt=task.description, create=snapshot, metadata=metadata
                ),
                retry=self.retry,
            )
        except ExecutionCompletedError:
            # Doing a task whose execution completed returns its stored output (seed semantics); one
            # whose records were cleaned up cannot, and is never run again under the same id.
            existing = await durable.storage.load_state_async(durable.execution_id)
            if existing is None or existing.status is not ExecutionStatus.COMPLETED:
                raise
            return AgentRunOutput.from_head(existing, load_output(existing, task.response_format), attempts=0)
        return AgentRunOutput.from_head(attempt.head, attempt.output, attempts=call.attempts)

    # ---- resuming ---------------------------------------------------------------------------------

    async def continue_durable_async(
        self,
        execution_id: str,
        storage: DurableExecutionStorage,
        *,
        tools: Sequence[ToolLike] | None = None,
        response_format: Any = None,
        debug: bool | None = None,
        auto_cleanup: bool = False,
        approvals: Approvals | None = None,
        resolutions: Resolutions | None = None,
        allow_changes: Iterable[str] | None = None,
        return_output: bool = False,
        worker_id: str | None = None,
        lease_ttl: float | None = None,
    ) -> Any:
        """Resume an interrupted, failed or paused execution from its journal and return its output.

        Journaled model requests and tool calls return their recorded results; the run goes live at
        the first step that was not journaled (a failed step is retried). Tool calls that already
        ran are never run again, whatever the decisions. Before anything runs, the rebuilt agent is
        checked against what the execution recorded (tools and their schemas, output type,
        instructions, prompt): a difference raises `ToolNotFoundError` / `JournalMismatchError`
        and changes nothing, unless `allow_changes` accepts it.

        Args:
            execution_id: The execution to resume.
            storage: The storage it was started with.
            tools: Tools to use instead of the ones this program registered under the recorded names.
            response_format: The output type, when the resuming program did not register the
                recorded one (its schema must match the recorded schema hash).
            debug: Log recovery details (defaults to this agent's `debug`).
            auto_cleanup: Delete the execution's records once it completes.
            approvals: Required when the execution is paused for approvals: one decision per waiting
                call id (`True`, `False`, a dict of override arguments, or a denial message the model
                will read). Missing or unknown ids raise `UserError`. The run may pause again (next
                round): the return value is then a new `DeferredToolRequests`.
            resolutions: For an execution paused on an interrupted non-idempotent call, by call id:
                `ToolResolution.done(result)` (it took effect; use this result), `.rerun()` (call it
                again) or `.abort()` (cancel the execution; raises `ExecutionAborted`).
            allow_changes: Identity differences to accept on purpose: any of `"tools"`, `"output"`,
                `"instructions"`, `"prompt"` (logged and recorded in the head).
            return_output: Return an `AgentRunOutput` instead of the bare output.
            worker_id: Lease owner for this resume instead of the agent's (recovery workers).
            lease_ttl: Lease time for this resume instead of the agent's.

        Raises:
            ExecutionCompletedError: The execution already completed (use `continue_run` to get its
                stored output instead).

        """
        durable = self._handle(
            storage,
            execution_id,
            auto_cleanup=auto_cleanup,
            debug=debug,
            worker_id=worker_id,
            lease_ttl=lease_ttl,
        )
        call = Call(run_id=execution_id, storage=storage)
        factory = self.resume_factory(tools=tools, response_format=response_format)
        work = self._resume(durable, factory, approvals, resolutions, allow_changes, call)
        out = await self._record(call, None, work)
        return out if return_output else out.output

    async def continue_run_async(
        self,
        task: Task | None = None,
        *,
        run_id: str | None = None,
        return_output: bool = False,
        approvals: Approvals | None = None,
        resolutions: Resolutions | None = None,
        tools: Sequence[ToolLike] | None = None,
        response_format: Any = None,
        allow_changes: Iterable[str] | None = None,
        debug: bool | None = None,
    ) -> Any:
        """Resume a run from its journal by `run_id` or by the `task` that ran it (the seed's API).

        The same mechanism as `continue_durable`, named the seed's way: the storage is the task's
        durable execution's, else this agent's `db`. Works with the agent that ran the task or a
        new one, in this process or another (a new process needs `run_id=`, or a
        `Task(..., durable_execution_id=run_id)`: the task's description does not identify a run).
        A run that already completed is not run again: its stored output is returned.

        Args:
            task: The task that ran (it carries its execution id); its tools are used to resume.
            run_id: The run's id (`AgentRunOutput.run_id`, `task.durable_execution_id`).
            return_output: Return an `AgentRunOutput` instead of the bare output.
            approvals: Decisions for a run paused for approvals (see `continue_durable_async`).
            resolutions: Decisions for an interrupted non-idempotent call (see `continue_durable_async`).
            tools: Tools to use instead of the ones this program registered under the recorded names.
            response_format: The output type, when this program did not register the recorded one.
            allow_changes: Identity differences to accept on purpose (see `continue_durable_async`).
            debug: Log recovery details (defaults to this agent's `debug`).

        """
        call = Call(run_id=run_id)
        given_format = (
            response_format
            if response_format is not None
            else (task.response_format if task is not None else None)
        )

        async def work() -> AgentRunOutput:
            durable = self._continue_target(task, run_id)
            call.run_id, call.storage = durable.execution_id, durable.storage
            if debug is not None:
                durable.debug = debug
            given = [*(tools or []), *(task.tools if task is not None else [])]
            factory = self.resume_factory(tools=given, response_format=given_format)
            try:
                return await self._resume(durable, factory, approvals, resolutions, allow_changes, call)
            except ExecutionCompletedError:
                head = await durable.load_head_async()
                output = load_output(
                    head, resolve_output_type(head.execution_id, head.task.response_format, given_format)
                )
                return AgentRunOutput.from_head(head, output, attempts=0)

        out = await self._record(call, task, work())
        return out if return_output else out.output

    def _continue_target(self, task: Task | None, run_id: str | None) -> DurableExecution:
        """The execution `continue_run` names, opened by this agent."""
        if task is None:
            if run_id is None:
                raise UserError("continue_run needs run_id=... (AgentRunOutput.run_id) or task=... .")
            if self.db is None:
                raise UserError(
                    f"continue_run(run_id={run_id!r}) looks the run up in the agent's db, but this agent has "
                    f"none: create it with db=SqliteDatabase(...) on the same file, or use "
                    f"continue_durable({run_id!r}, storage)."
                )
            return self._handle(self.db.storage, run_id, auto_cleanup=False)
        task_id = task.durable_execution_id
        if task_id is None:
            raise UserError(
                f"Task {task.description[:40]!r} has no durable execution id: it never ran durably. Pass "
                f"the Task object that ran, Task(..., durable_execution_id=run_id), or run_id=... ."
            )
        if run_id is not None and run_id != task_id:
            raise UserError(f"continue_run got run_id={run_id!r} but the task's execution is {task_id!r}.")
        if task.durable_execution is not None:
            given = task.durable_execution
            return self._handle(
                given.storage, task_id, auto_cleanup=given.auto_cleanup, debug=given.debug or self.debug
            )
        durable = self._durable_for(task)  # the agent's db; raises when it has none
        assert durable is not None
        return durable

    async def _resume(
        self,
        durable: DurableExecution,
        factory: AgentFactory,
        approvals: Approvals | None,
        resolutions: Resolutions | None,
        allow_changes: Iterable[str] | None,
        call: Call,
    ) -> AgentRunOutput:
        attempt = await run_attempts(
            durable,
            call,
            factory,
            lambda: durable.execute_async(
                factory, approvals=approvals, resolutions=resolutions, allow_changes=allow_changes
            ),
            retry=self.retry,
        )
        return AgentRunOutput.from_head(attempt.head, attempt.output, attempts=call.attempts)

    # ---- outcome ----------------------------------------------------------------------------------

    async def _record(self, call: Call, task: Task | None, work: Awaitable[AgentRunOutput]) -> AgentRunOutput:
        """Await `work`; leave its outcome on the agent (and task), also when it raises."""
        try:
            out = await work
        except BaseException as exc:  # also KeyboardInterrupt: the run id is what recovery needs
            head = None
            if isinstance(exc, Exception) and call.storage is not None and call.run_id is not None:
                try:
                    head = await call.storage.load_state_async(call.run_id)
                except Exception:  # the storage may be what failed; the run id is what matters
                    logger.debug("[%s] could not read the head after a failure", call.run_id, exc_info=True)
            out = AgentRunOutput.from_error(call.run_id, exc, head, attempts=call.attempts)
            self._agent_run_output = out
            if task is not None and head is not None:
                task.status, task.pending = out.status, out.pending
            raise
        self._agent_run_output = out
        if task is not None:
            task.response, task.status, task.pending = out.output, out.status, out.pending
        return out
