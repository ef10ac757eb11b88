"""`Agent`: the seed API's agent, a thin builder of durable pydantic-ai agents.

Each `do` builds a pydantic-ai `Agent` with the task's tools and output type and the
`PerdureDurability` capability, then runs it as the task's durable execution. Resuming
(`continue_durable`) rebuilds the same agent from what the execution recorded: tools by name or
import path, the output type by import path, and the model from this agent or else the record.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.models import Model
from pydantic_ai.usage import UsageLimits

from .._sync import run_sync
from ..durable.capability import PerdureDurability
from ..durable.execution import AttemptResult, DurableExecution, enable_debug_logging
from ..errors import ExecutionCompletedError, PerdureError, UserError
from ..models import model_to_string, resolve_model
from ..records import ExecutionRecord, ExecutionStatus, TaskSnapshot
from ..storage.base import DurableExecutionStorage
from .task import Task
from .tools import ToolLike, import_ref, object_ref, resolve_tools, to_pydantic_tool, to_tool_ref

__all__ = ["Agent"]

logger = logging.getLogger("perdure")

DEFAULT_REQUEST_LIMIT = 200
"""Model requests one run may make; pydantic-ai's own default (50) is too low for long durable runs."""


class Agent:
    """An agent that runs `Task`s, durably when the task has a `DurableExecution`.

    Args:
        model: `"provider/model"`, `"provider:model"`, `"perdure:scripted"` (offline stand-in) or a
            pydantic-ai `Model`. May be omitted when only resuming: the recorded model is used.
        name: Agent name, stored with executions (informational).
        system_prompt: Instructions for every task (alias: `instructions`).
        tools: Tools available to every task.
        debug: Log checkpoints and recovery via the `perdure` logger.
        retry: How many times `do` resumes a failed execution from its journal before raising.
        request_limit: Maximum model requests per run (`None` for no limit).
        model_settings: pydantic-ai model settings (temperature, timeouts, ...).

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
        retry: int = 0,
        request_limit: int | None = DEFAULT_REQUEST_LIMIT,
        model_settings: dict[str, Any] | None = None,
    ) -> None:
        if retry < 0:
            raise UserError(f"retry must be >= 0, got {retry!r}.")
        self.model = model
        self.name = name
        self.instructions = instructions if instructions is not None else system_prompt
        self.tools: list[ToolLike] = list(tools or [])
        self.debug = debug
        self.retry = retry
        self.request_limit = request_limit
        self.model_settings = model_settings
        if debug:
            enable_debug_logging()

    @property
    def system_prompt(self) -> str | None:
        """Alias of `instructions` (seed name)."""
        return self.instructions

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
    ) -> PydanticAgent[Any, Any]:
        if model is None:
            raise UserError(
                "Agent needs a model: pass Agent('openai/gpt-4o-mini') or Agent('perdure:scripted')."
            )
        return PydanticAgent(
            resolve_model(model),
            name=self.name or "perdure",
            instructions=instructions,
            tools=[to_pydantic_tool(item) for item in tools],
            output_type=output_type if output_type is not None else str,
            model_settings=self.model_settings,  # type: ignore[arg-type]
            defer_model_check=True,
            capabilities=[PerdureDurability()],
        )

    def _run_kwargs(self) -> dict[str, Any]:
        return {"usage_limits": UsageLimits(request_limit=self.request_limit)}

    def _snapshot(self, task: Task, tools: Sequence[ToolLike]) -> TaskSnapshot:
        response_format = None
        if task.response_format is not None:
            response_format = object_ref(task.response_format)
            if response_format is None:
                raise UserError(
                    f"response_format {task.response_format!r} must be defined at module level so a "
                    f"resumed execution can find it again by import path."
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

    # ---- running tasks ----------------------------------------------------------------------------

    async def do_async(self, task: Task) -> Any:
        """Run `task` and return its output; a durable task journals every step as it goes.

        Doing a durable task whose execution already exists continues it; one that completed
        returns its stored output without running anything.
        """
        tools = [*self.tools, *task.tools]
        agent = self._build(
            model=self.model, tools=tools, output_type=task.response_format, instructions=self.instructions
        )
        durable = task.durable_execution
        if durable is None:
            result = await agent.run(task.description, **self._run_kwargs())
            task.response = result.output
            return result.output
        if self.debug and not durable.debug:
            durable.debug = True
        existing = await durable.storage.load_state_async(durable.execution_id)
        if existing is not None and existing.status is ExecutionStatus.COMPLETED:
            task.response = _load_output(existing, task.response_format)
            return task.response
        attempt = await self._with_retries(
            durable,
            agent,
            lambda: durable.run_agent_async(
                agent, task.description, task=self._snapshot(task, tools), **self._run_kwargs()
            ),
        )
        task.response = attempt.output
        return attempt.output

    def do(self, task: Task) -> Any:
        """Sync twin of `do_async`; works inside a running event loop too."""
        return run_sync(self.do_async(task))

    async def continue_durable_async(
        self,
        execution_id: str,
        storage: DurableExecutionStorage,
        *,
        tools: Sequence[ToolLike] | None = None,
        debug: bool | None = None,
        auto_cleanup: bool = False,
    ) -> Any:
        """Resume an interrupted or failed execution from its journal and return its output.

        Journaled model requests and tool calls return their recorded results; the run goes live at
        the first step that was not journaled (a failed step is retried).

        Args:
            execution_id: The execution to resume.
            storage: The storage it was started with.
            tools: Tools to use instead of importing them by their recorded paths.
            debug: Log recovery details (defaults to this agent's `debug`).
            auto_cleanup: Delete the execution's records once it completes.

        """
        durable = DurableExecution(
            storage,
            execution_id=execution_id,
            debug=self.debug if debug is None else debug,
            auto_cleanup=auto_cleanup,
        )
        head = await durable.load_head_async()
        if head.status is ExecutionStatus.COMPLETED:
            raise ExecutionCompletedError(execution_id)
        agent = self._rebuild(head, tools or [])
        attempt = await self._with_retries(
            durable, agent, lambda: durable.resume_agent_async(agent, **self._run_kwargs())
        )
        return attempt.output

    def continue_durable(
        self,
        execution_id: str,
        storage: DurableExecutionStorage,
        *,
        tools: Sequence[ToolLike] | None = None,
        debug: bool | None = None,
        auto_cleanup: bool = False,
    ) -> Any:
        """Sync twin of `continue_durable_async`."""
        return run_sync(
            self.continue_durable_async(
                execution_id, storage, tools=tools, debug=debug, auto_cleanup=auto_cleanup
            )
        )

    def _rebuild(self, head: ExecutionRecord, given: Sequence[ToolLike]) -> PydanticAgent[Any, Any]:
        snapshot = head.task
        tools = resolve_tools(head.execution_id, snapshot.tools, [*given, *self.tools])
        output_type = None
        if snapshot.response_format:
            try:
                output_type = import_ref(snapshot.response_format)
            except (ImportError, AttributeError) as exc:
                raise UserError(
                    f"Execution {head.execution_id!r} returns {snapshot.response_format!r}, which cannot be "
                    f"imported ({exc}). Make it importable in this process and resume again."
                ) from exc
        model = self.model if self.model is not None else snapshot.model
        instructions = self.instructions if self.instructions is not None else snapshot.instructions
        return self._build(model=model, tools=tools, output_type=output_type, instructions=instructions)

    async def _with_retries(
        self,
        durable: DurableExecution,
        agent: PydanticAgent[Any, Any],
        first: Callable[[], Awaitable[AttemptResult[Any]]],
    ) -> AttemptResult[Any]:
        """Run `first`; on failure resume from the journal up to `self.retry` more times.

        A retry never restarts the task: it replays the journal, so finished model requests and
        tool calls are not paid for or executed again.
        """
        failures = 0
        while True:
            try:
                if failures == 0:
                    return await first()
                return await durable.resume_agent_async(agent, **self._run_kwargs())
            except PerdureError:
                raise  # misuse, corruption or a mismatch: resuming again cannot help
            except Exception as exc:
                failures += 1
                if failures > self.retry:
                    raise
                logger.warning(
                    "[%s] attempt %d failed (%s: %s); resuming from the journal",
                    durable.execution_id,
                    failures,
                    type(exc).__name__,
                    exc,
                )


def _load_output(head: ExecutionRecord, response_format: Any) -> Any:
    if response_format is None or head.output is None:
        return head.output
    from pydantic import TypeAdapter

    return TypeAdapter(response_format).validate_python(head.output)
