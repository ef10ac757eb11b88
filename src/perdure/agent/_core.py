"""`AgentCore`: an `Agent`'s configuration, and how it builds and opens what a call runs.

This is what every entry point of the facade (`do`, `continue_durable`, `continue_run`, the
recovery workers' `resume_factory`) shares: the validated settings, the pydantic-ai agent built for
a task (and rebuilt, for a resume, from what the execution recorded), the task snapshot stored at
creation, and the `DurableExecution` handles the agent opens with its worker id and lease time.
Kept apart from the entry points so that building an agent can be read, and changed, without the
attempt and outcome bookkeeping of the calls around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.models import Model
from pydantic_ai.tools import DeferredToolRequests
from pydantic_ai.usage import UsageLimits

from ..db import Database
from ..durable.capability import PerdureDurability
from ..durable.circuit import CircuitBreaker
from ..durable.engine import AgentFactory, ResumeTarget, enable_debug_logging
from ..durable.execution import DurableExecution
from ..durable.retry import RetryPolicy
from ..errors import UserError
from ..models import model_to_string, resolve_model
from ..records import ExecutionRecord, TaskSnapshot
from ..storage.base import DurableExecutionStorage
from .output import AgentRunOutput
from .task import Task
from .tools import (
    ToolLike,
    object_ref,
    register_output_type,
    register_tool,
    resolve_output_type,
    resolve_tools,
    to_pydantic_tool,
    to_tool_ref,
)

__all__ = ["DEFAULT_REQUEST_LIMIT", "AgentCore"]

DEFAULT_REQUEST_LIMIT = 200
"""Model requests one run may make; pydantic-ai's own default (50) is too low for long durable runs."""


class AgentCore:
    """The configuration and building blocks of `perdure.Agent` (see `Agent` for the arguments).

    Not used on its own: `Agent` adds the entry points that run and resume tasks.
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
        lease_ttl: float | None = None,
        print: bool = False,
    ) -> None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise UserError(f"retry is the number of attempts (>= 1), got {retry!r}.")
        for label, policy in (("retry_policy", retry_policy), ("tool_retry_policy", tool_retry_policy)):
            if policy is not None and not isinstance(policy, RetryPolicy):
                raise UserError(f"Agent({label}=...) takes a RetryPolicy, got {policy!r}.")
        if circuit_breaker is not None and not isinstance(circuit_breaker, CircuitBreaker):
            raise UserError(f"Agent(circuit_breaker=...) takes a CircuitBreaker, got {circuit_breaker!r}.")
        if lease_ttl is not None and not lease_ttl > 0:
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
        self.lease_ttl = None if lease_ttl is None else float(lease_ttl)
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
                    warn_outside_execution=durable,  # a non-durable task runs plainly on purpose
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
            expected_steps=task.expected_steps,
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
