"""`Agent`: the seed API's agent, a thin builder of durable pydantic-ai agents.

Each `do` builds a pydantic-ai `Agent` with the task's tools and output type and the
`PerdureDurability` capability, then runs it as the task's durable execution. Resuming
(`continue_durable`, `continue_run`) rebuilds the same agent from what the execution recorded: its
tools and output type are found among what this program registered (`@tool`, the tools and
`response_format` given to an `Agent` or `Task`, `perdure.register`) or passed explicitly, never
imported by the name a record gives; the model is this agent's, else the recorded one. The engine
then checks the rebuilt agent against the execution's identity before anything runs. Both resume
entry points are the same mechanism (`DurableExecution` + journal): they
differ only in how they name the run (execution id + storage, or `run_id` / `task` + the agent's
`db`) and in what a completed run gives back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.exceptions import UnexpectedModelBehavior, UsageLimitExceeded
from pydantic_ai.exceptions import UserError as PydanticAIUserError
from pydantic_ai.models import Model
from pydantic_ai.tools import DeferredToolRequests
from pydantic_ai.usage import UsageLimits

from .._sync import run_sync
from ..db import Database
from ..durable.capability import PerdureDurability
from ..durable.circuit import CircuitBreaker
from ..durable.decisions import ApprovalDecision, ToolResolution
from ..durable.engine import AgentFactory, AttemptResult, ResumeTarget, enable_debug_logging
from ..durable.execution import DurableExecution
from ..durable.leases import DEFAULT_LEASE_TTL
from ..durable.retry import RetryPolicy
from ..errors import ExecutionCompletedError, PerdureError, UserError
from ..models import model_to_string, resolve_model
from ..records import ExecutionRecord, ExecutionStatus, TaskSnapshot
from ..storage.base import DurableExecutionStorage
from .output import AgentRunOutput
from .task import OutputT, Task
from .tools import (
    ToolLike,
    object_ref,
    register_output_type,
    register_tool,
    requires_approval,
    resolve_output_type,
    resolve_tools,
    to_pydantic_tool,
    to_tool_ref,
)

__all__ = ["DEFAULT_REQUEST_LIMIT", "Agent"]

logger = logging.getLogger("perdure")

DEFAULT_REQUEST_LIMIT = 200
"""Model requests one run may make; pydantic-ai's own default (50) is too low for long durable runs."""

_NOT_RESUMABLE: tuple[type[BaseException], ...] = (
    PerdureError,  # misuse, corruption, a pause or a mismatch: resuming again cannot help
    PydanticAIUserError,  # misconfiguration
    UsageLimitExceeded,  # the replayed usage reaches the same limit again
    UnexpectedModelBehavior,  # raised while handling a journaled response: a replay repeats it
)

Approvals = Mapping[str, ApprovalDecision]
Resolutions = Mapping[str, ToolResolution | str]


@dataclass
class _Call:
    """Bookkeeping of one public call, so a failure can still report the run id and attempts."""

    run_id: str | None = None
    storage: DurableExecutionStorage | None = None
    attempts: int = 0


class Agent:
    """An agent that runs `Task`s, durably when the task has a `DurableExecution` or the agent a `db`.

    Args:
        model: `"provider/model"`, `"provider:model"`, `"perdure:scripted"` (offline stand-in) or a
            pydantic-ai `Model`. May be omitted when only resuming: the recorded model is used.
        name: Agent name, stored with executions (informational).
        system_prompt: Instructions for every task (alias: `instructions`).
        tools: Tools available to every task.
        debug: Log checkpoints and recovery via the `perdure` logger.
        retry: Total attempts of one `do` / `continue_*` call (the seed's meaning; default 1, i.e. no
            internal retries; `retry=1` is what the seed recommends when you implement your own
            recovery). Every further attempt *resumes* the execution from its journal, it never starts
            the task over: finished model requests and tool calls are not paid for or run again.
            Errors that a resume cannot fix (perdure's own errors, pauses, usage limits, pydantic-ai
            misuse) are raised at once. `0` is accepted as `1` for backward compatibility.
        request_limit: Maximum model requests per run (`None` for no limit).
        model_settings: pydantic-ai model settings (temperature, timeouts, ...).
        retry_policy: Durable retry policy of model requests (attempts are journaled, back-off).
        tool_retry_policy: Default durable retry policy of tool calls; `@tool(retry=...)` overrides it.
        circuit_breaker: Circuit breaker guarding the model requests.
        db: A `perdure.db` database (e.g. `SqliteDatabase`): every task becomes durable in its storage,
            with its session and user ids recorded, and `continue_run(run_id=...)` finds runs there.
        worker_id: Lease owner id of the executions this agent opens (default `host:pid:random`).
        lease_ttl: Lease time of the executions this agent opens. A `DurableExecution` the caller
            attached to a task keeps its own `worker_id` and `lease_ttl`.
        print: Accepted for compatibility with the seed API (Upsonic's `print=`); perdure prints
            nothing by itself either way (use `debug=True` for log lines).

    """

    def __init__(
        self,
        model: str | Model | None = None,
        *,
        name: str | None = None,
        system_prompt: str | None = None,
        instructions: str | None = None,
        tools: Sequence[ToolLike] | None = None,
        debug: bool = False,
        retry: int = 1,
        request_limit: int | None = DEFAULT_REQUEST_LIMIT,
        model_settings: dict[str, Any] | None = None,
        retry_policy: RetryPolicy | None = None,
        tool_retry_policy: RetryPolicy | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        db: Database | None = None,
        worker_id: str | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        print: bool = False,
    ) -> None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise UserError(f"retry is the number of attempts (>= 1), got {retry!r}.")
        for label, policy in (("retry_policy", retry_policy), ("tool_retry_policy", tool_retry_policy)):
            if policy is not None and not isinstance(policy, RetryPolicy):
                raise UserError(f"Agent({label}=...) takes a RetryPolicy, got {policy!r}.")
        if circuit_breaker is not None and not isinstance(circuit_breaker, CircuitBreaker):
            raise UserError(f"Agent(circuit_breaker=...) takes a CircuitBreaker, got {circuit_breaker!r}.")
        if not lease_ttl > 0:
            raise UserError(f"lease_ttl must be > 0 seconds, got {lease_ttl!r}.")
        self.model = model
        self.name = name
        self.instructions = instructions if instructions is not None else system_prompt
        self.tools: list[ToolLike] = list(tools or [])
        for item in self.tools:
            register_tool(item)
        self.print = print
        self.debug = debug
        self.retry = max(retry, 1)
        self.request_limit = request_limit
        self.model_settings = model_settings
        self.retry_policy = retry_policy
        self.tool_retry_policy = tool_retry_policy
        self.circuit_breaker = circuit_breaker
        self.db = db
        self.worker_id = worker_id
        self.lease_ttl = float(lease_ttl)
        self._agent_run_output: AgentRunOutput | None = None
        if debug:
            enable_debug_logging()

    @property
    def system_prompt(self) -> str | None:
        """Alias of `instructions` (seed name)."""
        return self.instructions

    @property
    def last_run_output(self) -> AgentRunOutput | None:
        """The outcome of the last call, also after it raised (the seed's `agent._agent_run_output`)."""
        return self._agent_run_output

    def __repr__(self) -> str:
        return f"Agent(model={model_to_string(self.model)!r}, name={self.name!r})"

    # ---- building ---------------------------------------------------------------------------------

    def _build(
        self,
        *,
        model: str | Model | None,
        tools: Sequence[ToolLike],
        output_type: Any,
        instructions: str | None,
        durable: bool = True,
    ) -> PydanticAgent[Any, Any]:
        """The pydantic-ai agent for a task.

        A durable agent always lists `DeferredToolRequests` among its output types: a tool that needs
        approval (declared, or raising `ApprovalRequired`) then ends the run `paused` with the calls
        stored, instead of failing it. The rule depends only on durability, so the agent rebuilt for a
        resume has exactly the output types of the original run.
        """
        if model is None:
            raise UserError(
                "Agent needs a model: pass Agent('openai/gpt-4o-mini') or Agent('perdure:scripted')."
            )
        output: Any = output_type if output_type is not None else str
        if durable:
            base = list(output) if isinstance(output, list | tuple) else [output]
            output = base if DeferredToolRequests in base else [*base, DeferredToolRequests]
        return PydanticAgent(
            resolve_model(model),
            name=self.name or "perdure",
            instructions=instructions,
            tools=[to_pydantic_tool(item) for item in tools],
            output_type=output,
            model_settings=self.model_settings,  # type: ignore[arg-type]
            defer_model_check=True,
            capabilities=[
                PerdureDurability(
                    retry=self.retry_policy,
                    tool_retry=self.tool_retry_policy,
                    circuit_breaker=self.circuit_breaker,
                )
            ],
        )

    def _run_kwargs(self) -> dict[str, Any]:
        return {"usage_limits": UsageLimits(request_limit=self.request_limit)}

    def _snapshot(self, task: Task, tools: Sequence[ToolLike]) -> TaskSnapshot:
        response_format = None
        if task.response_format is not None:
            register_output_type(task.response_format)
            response_format = object_ref(task.response_format)
            if response_format is None:
                raise UserError(
                    f"response_format {task.response_format!r} must be defined at module level so a "
                    f"resumed execution can find it again by its recorded name (module:qualname)."
                )
        return TaskSnapshot(
            description=task.description,
            response_format=response_format,
            tools=[to_tool_ref(item) for item in tools],
            model=model_to_string(self.model),
            agent_name=self.name,
            instructions=self.instructions,
            context=task.context,
        )

    def _rebuild(
        self, head: ExecutionRecord, given: Sequence[ToolLike], response_format: Any = None
    ) -> PydanticAgent[Any, Any]:
        snapshot = head.task
        tools = resolve_tools(head.execution_id, snapshot.tools, [*given, *self.tools])
        output_type = resolve_output_type(head.execution_id, snapshot.response_format, response_format)
        model = self.model if self.model is not None else snapshot.model
        instructions = self.instructions if self.instructions is not None else snapshot.instructions
        return self._build(model=model, tools=tools, output_type=output_type, instructions=instructions)

    def resume_factory(
        self, *, tools: Sequence[ToolLike] | None = None, response_format: Any = None
    ) -> AgentFactory:
        """The engine's agent factory for resuming executions of this agent (recovery and workers).

        Given an execution's head, it rebuilds the pydantic-ai agent the execution ran: the recorded
        tools (from `tools`, this agent's tools, or those the program registered), the recorded output
        type (`response_format`, or the registered one) and this agent's model, else the recorded one.
        """
        given = list(tools or [])
        for item in given:
            register_tool(item)

        def factory(head: ExecutionRecord) -> ResumeTarget:
            return ResumeTarget(self._rebuild(head, given, response_format), self._run_kwargs())

        return factory

    def _handle(
        self,
        storage: DurableExecutionStorage,
        execution_id: str | None,
        *,
        auto_cleanup: bool,
        debug: bool | None = None,
        worker_id: str | None = None,
        lease_ttl: float | None = None,
    ) -> DurableExecution:
        """A `DurableExecution` opened by this agent (its worker id and lease time, unless overridden)."""
        return DurableExecution(
            storage,
            execution_id=execution_id,
            auto_cleanup=auto_cleanup,
            debug=self.debug if debug is None else debug,
            worker_id=worker_id or self.worker_id,
            lease_ttl=self.lease_ttl if lease_ttl is None else lease_ttl,
        )

    def _durable_for(self, task: Task) -> DurableExecution | None:
        """The task's durable execution; one in the agent's `db` (attached to the task) if it has none."""
        if task.durable_execution is not None:
            return task.durable_execution
        if self.db is None:
            if task.durable_execution_id is not None:
                raise UserError(
                    f"Task names execution {task.durable_execution_id!r} but has no durable_execution, and "
                    f"the agent has no db to find it in. Create the agent with db=SqliteDatabase(...) or "
                    f"give the task durable_execution=DurableExecution(storage, "
                    f"execution_id={task.durable_execution_id!r})."
                )
            return None
        durable = self._handle(self.db.storage, task.durable_execution_id, auto_cleanup=False)
        task.durable_execution = durable
        return durable

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
        call = _Call()

        async def work() -> AgentRunOutput:
            tools = [*self.tools, *task.tools]
            durable = self._durable_for(task)
            if durable is None:
                return await self._do_plain(task, tools)
            call.run_id, call.storage = durable.execution_id, durable.storage
            return await self._do_durable(task, durable, tools, call)

        out = await self._record(call, task, work())
        return out if return_output else out.output

    @overload
    def do(
        self, task: Task[OutputT], *, return_output: Literal[False] = False
    ) -> OutputT | DeferredToolRequests: ...
    @overload
    def do(self, task: Task[OutputT], *, return_output: Literal[True]) -> AgentRunOutput: ...
    def do(self, task: Task[Any], *, return_output: bool = False) -> Any:
        """Sync twin of `do_async`; works inside a running event loop too."""
        coro: Any = self.do_async(task, return_output=return_output)  # type: ignore[call-overload]
        return run_sync(coro)

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
        self, task: Task, durable: DurableExecution, tools: Sequence[ToolLike], call: _Call
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
            attempt = await self._attempts(
                durable,
                call,
                lambda head: target,
                lambda: durable.execute_async(
                    lambda head: target, prompt=task.description, create=snapshot, metadata=metadata
                ),
            )
        except ExecutionCompletedError:
            # Doing a task whose execution completed returns its stored output (seed semantics); one
            # whose records were cleaned up cannot, and is never run again under the same id.
            existing = await durable.storage.load_state_async(durable.execution_id)
            if existing is None or existing.status is not ExecutionStatus.COMPLETED:
                raise
            return AgentRunOutput.from_head(
                existing, _load_output(existing, task.response_format), attempts=0
            )
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
        call = _Call(run_id=execution_id, storage=storage)
        factory = self.resume_factory(tools=tools, response_format=response_format)
        work = self._resume(durable, factory, approvals, resolutions, allow_changes, call)
        out = await self._record(call, None, work)
        return out if return_output else out.output

    def continue_durable(
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
        """Sync twin of `continue_durable_async`."""
        return run_sync(
            self.continue_durable_async(
                execution_id,
                storage,
                tools=tools,
                response_format=response_format,
                debug=debug,
                auto_cleanup=auto_cleanup,
                approvals=approvals,
                resolutions=resolutions,
                allow_changes=allow_changes,
                return_output=return_output,
                worker_id=worker_id,
                lease_ttl=lease_ttl,
            )
        )

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
        call = _Call(run_id=run_id)
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
                output = _load_output(
                    head, resolve_output_type(head.execution_id, head.task.response_format, given_format)
                )
                return AgentRunOutput.from_head(head, output, attempts=0)

        out = await self._record(call, task, work())
        return out if return_output else out.output

    def continue_run(
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
        """Sync twin of `continue_run_async`."""
        return run_sync(
            self.continue_run_async(
                task,
                run_id=run_id,
                return_output=return_output,
                approvals=approvals,
                resolutions=resolutions,
                tools=tools,
                response_format=response_format,
                allow_changes=allow_changes,
                debug=debug,
            )
        )

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
        call: _Call,
    ) -> AgentRunOutput:
        attempt = await self._attempts(
            durable,
            call,
            factory,
            lambda: durable.execute_async(
                factory, approvals=approvals, resolutions=resolutions, allow_changes=allow_changes
            ),
        )
        return AgentRunOutput.from_head(attempt.head, attempt.output, attempts=call.attempts)

    # ---- attempts and outcome ---------------------------------------------------------------------

    async def _attempts(
        self,
        durable: DurableExecution,
        call: _Call,
        factory: AgentFactory,
        first: Callable[[], Awaitable[AttemptResult[Any]]],
    ) -> AttemptResult[Any]:
        """Run `first`; on failure resume from the journal until `self.retry` attempts were made.

        A further attempt never restarts the task: it replays the journal, so finished model requests
        and tool calls are not paid for or executed again. Decisions passed to `first` were journaled
        by it, so later attempts resume without them.
        """
        while True:
            call.attempts += 1
            try:
                if call.attempts == 1:
                    return await first()
                return await durable.execute_async(factory)
            except Exception as exc:
                if call.attempts >= self.retry or isinstance(exc, _NOT_RESUMABLE):
                    raise
                logger.warning(
                    "[%s] attempt %d of %d failed (%s: %s); resuming from the journal",
                    durable.execution_id,
                    call.attempts,
                    self.retry,
                    type(exc).__name__,
                    exc,
                )

    async def _record(
        self, call: _Call, task: Task | None, work: Awaitable[AgentRunOutput]
    ) -> AgentRunOutput:
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


def _load_output(head: ExecutionRecord, response_format: Any) -> Any:
    if response_format is None or head.output is None:
        return head.output
    from pydantic import TypeAdapter

    return TypeAdapter(response_format).validate_python(head.output)
