"""The Temporal engine: perdure agents as Temporal workflows, model requests and tool calls as activities.

Underneath is pydantic-ai's own Temporal durability (`TemporalDurability`, the current API; the
`TemporalAgent` wrapper is deprecated): `bind` swaps an agent's `PerdureDurability()` for it, so the
agent's model requests and tool calls become activities, and registers the agent by name for the
generic `perdure.agent` workflow (`perdure.engines._temporal_workflow`). The client side starts,
observes and steers those workflows; `serve` runs a worker (`perdure worker --engine temporal`).

Install with `pip install 'perdure[temporal]'`. What maps and what does not: docs/engines-temporal.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic_ai.agent.abstract import AbstractAgent
from pydantic_ai.capabilities.abstract import AbstractCapability
from pydantic_ai.capabilities.combined import CombinedCapability
from pydantic_ai.durable_exec.temporal import PydanticAIPlugin, TemporalDurability
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.tools import DeferredToolRequests
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import CancelledError as TemporalCancelledError
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from ..errors import ExecutionConflictError, ExecutionNotFoundError, UserError
from ..records import ExecutionStatus, PendingCall
from ._base import Engine, EngineOptions, EngineRun
from ._temporal_map import (
    activity_configs,
    error_text,
    execution_info,
    perdure_status,
    run_input,
    run_memo,
    status_query,
)
from ._temporal_worker import build_worker
from ._temporal_workflow import (
    DECIDE_UPDATE,
    MEMO_KEY,
    WORKFLOW_NAME,
    AgentRunOutput,
    CallDecision,
    ContinueAsNewWhenLong,
    RunMemo,
    register_agent,
)

if TYPE_CHECKING:
    from ..durable.capability import PerdureDurability

__all__ = ["TemporalEngine"]

_POLL_FIRST, _POLL_MAX = 0.05, 1.0


class TemporalEngine(Engine):
    """perdure agents on a Temporal server: one workflow per execution, activities per unit."""

    name: ClassVar[str] = "temporal"
    extra: ClassVar[str] = "temporal"

    def __init__(self, options: EngineOptions | None = None) -> None:
        super().__init__(options)
        self._client: Client | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    # ---- build time ------------------------------------------------------------------------------

    def bind(
        self, capability: PerdureDurability[Any], agent: AbstractAgent[Any, Any]
    ) -> AbstractCapability[Any]:
        """`TemporalDurability` carrying the capability's name, models, handler and retry policies.

        The agent is registered by name so the worker's `perdure.agent` workflow can run it.
        """
        base, model = activity_configs(self.options, capability.retry, capability.tool_retry)
        models = capability.extra_models or None  # pydantic-ai keeps `models=` there
        durability: TemporalDurability[Any] = TemporalDurability(
            name=capability.name or None,
            models=models,
            event_stream_handler=capability.user_event_handler,
            activity_config=base,
            model_activity_config=model,
        )
        bound = durability.for_agent(agent)
        register_agent(capability.name or agent.name or "", agent)
        return CombinedCapability([ContinueAsNewWhenLong(), bound])

    # ---- connection ------------------------------------------------------------------------------

    async def client(self) -> Client:
        """The Temporal client of the running event loop, connected on first use."""
        loop = asyncio.get_running_loop()
        if self._client is not None and self._client_loop is loop:
            return self._client
        address, namespace = self.options.temporal_address, self.options.temporal_namespace
        timeout = self.options.temporal_connect_timeout
        try:
            client = await asyncio.wait_for(
                Client.connect(
                    address,
                    namespace=namespace,
                    plugins=[PydanticAIPlugin()],
                    connect_timeout=timedelta(seconds=timeout),
                ),
                timeout=timeout + 1,
            )
        except (RuntimeError, OSError, TimeoutError, RPCError) as exc:
            raise UserError(
                f"Cannot reach the Temporal server at {address} (namespace {namespace!r}): "
                f"{str(exc) or type(exc).__name__}. Start it (`temporal server start-dev`) or point "
                f"perdure at it with PERDURE_TEMPORAL_ADDRESS / --address."
            ) from exc
        self._client, self._client_loop = client, loop
        return client

    async def close(self) -> None:
        """Forget the client (the SDK closes its connection when it is garbage collected)."""
        self._client = None
        self._client_loop = None

    async def _handle(self, execution_id: str) -> WorkflowHandle[Any, Any]:
        return (await self.client()).get_workflow_handle(execution_id)

    def _not_found(self, execution_id: str) -> ExecutionNotFoundError:
        return ExecutionNotFoundError(
            execution_id,
            backend="temporal",
            where=f"(namespace {self.options.temporal_namespace!r} at {self.options.temporal_address})",
        )

    async def _describe(self, execution_id: str) -> WorkflowExecutionDescription | None:
        handle = await self._handle(execution_id)
        try:
            return await handle.describe()
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:
                return None
            raise

    # ---- client side -----------------------------------------------------------------------------

    async def start_agent(
        self, agent: AbstractAgent[Any, Any], prompt: str, *, execution_id: str, **run_kwargs: Any
    ) -> str:
        """Start the `perdure.agent` workflow with id `execution_id`, or join the run that has it.

        A run with this id that is still going or already closed is joined, never started again;
        one of another agent is refused.
        """
        name = TemporalDurability.from_agent(agent)
        if name is None:
            raise UserError(
                f"Agent {agent.name!r} is not bound to the temporal engine (execution {execution_id}): "
                f"build it with PerdureDurability() after setting PERDURE_ENGINE=temporal, or with "
                f"PerdureDurability(engine='temporal')."
            )
        request = run_input(name.name, prompt, execution_id, run_kwargs)
        request.max_history = self.options.temporal_max_history
        client = await self.client()
        with contextlib.suppress(WorkflowAlreadyStartedError):  # closed with this id: join it, never rerun
            await client.start_workflow(
                WORKFLOW_NAME,
                request,
                id=execution_id,
                task_queue=self.options.temporal_task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                memo={MEMO_KEY: RunMemo(agent=name.name).model_dump(mode="json")},
            )
        found = await self._describe(execution_id)
        memo = await run_memo(found) if found is not None else None
        if found is not None and (
            found.workflow_type != WORKFLOW_NAME or memo is None or memo.agent != name.name
        ):
            raise ExecutionConflictError(
                execution_id,
                f"Execution {execution_id!r} already exists on Temporal as a {found.workflow_type} run"
                f"{f' of agent {memo.agent!r}' if memo else ''}, not of agent {name.name!r}. Use a new "
                f"execution id.",
            )
        return execution_id

    async def result(self, execution_id: str, *, wait: bool = True) -> EngineRun[Any]:
        """The run's state; with `wait`, once it completed, failed, was cancelled or paused for approval.

        Completion is long-polled through the workflow result; a pause (the workflow keeps running)
        is seen in the memo, polled every 50 ms growing to 1 s.
        """
        handle = await self._handle(execution_id)
        if not wait:
            return await self._snapshot(execution_id, handle)
        finished = asyncio.ensure_future(handle.result())
        delay = _POLL_FIRST
        try:
            while True:
                done, _ = await asyncio.wait({finished}, timeout=delay)
                if done:
                    break
                paused, _ = await self._paused(execution_id)
                if paused is not None:
                    return paused
                delay = min(delay * 2, _POLL_MAX)
        finally:
            if not finished.done():
                finished.cancel()
        return self._finished(execution_id, finished)

    def _finished(self, execution_id: str, finished: asyncio.Future[Any]) -> EngineRun[Any]:
        error = finished.exception()
        if error is None:
            outcome = AgentRunOutput.model_validate(finished.result())
            info = {"approval_rounds": outcome.approval_rounds, "requests": outcome.requests}
            return EngineRun(
                execution_id, self.name, ExecutionStatus.COMPLETED, output=outcome.output, info=info
            )
        if isinstance(error, RPCError) and error.status is RPCStatusCode.NOT_FOUND:
            raise self._not_found(execution_id) from error
        if isinstance(error, WorkflowFailureError):
            if isinstance(error.cause, TemporalCancelledError):
                return EngineRun(execution_id, self.name, ExecutionStatus.CANCELLED, error=error_text(error))
            return EngineRun(execution_id, self.name, ExecutionStatus.FAILED, error=error_text(error))
        raise error

    async def _paused(self, execution_id: str) -> tuple[EngineRun[Any] | None, ExecutionStatus]:
        """The paused run from the memo (None when not paused), and the status Temporal reports now."""
        found = await self._describe(execution_id)
        if found is None:
            raise self._not_found(execution_id)
        memo = await run_memo(found)
        status = perdure_status(found.status, memo)
        if status is not ExecutionStatus.PAUSED or memo is None:
            return None, status
        calls = [
            PendingCall(tool_call_id=c.tool_call_id, tool_name=c.tool_name, args=c.args) for c in memo.pending
        ]
        requests = DeferredToolRequests(
            approvals=[ToolCallPart(c.tool_name, c.args, tool_call_id=c.tool_call_id) for c in memo.pending]
        )
        run = EngineRun(
            execution_id, self.name, status, output=requests, pending=calls, info={"round": memo.round}
        )
        return run, status

    async def _snapshot(self, execution_id: str, handle: WorkflowHandle[Any, Any]) -> EngineRun[Any]:
        """The state now: paused or running from the memo; a closed run's outcome from its result."""
        paused, status = await self._paused(execution_id)
        if paused is not None:
            return paused
        if status is ExecutionStatus.SUCCESS:
            return EngineRun(execution_id, self.name, status)
        finished = asyncio.ensure_future(handle.result())
        await asyncio.wait({finished})
        return self._finished(execution_id, finished)

    async def describe(self, execution_id: str) -> dict[str, Any] | None:
        """The run as an info dict from Temporal's describe (None when Temporal has no such workflow)."""
        found = await self._describe(execution_id)
        if found is None:
            return None
        memo = await run_memo(found)
        error = output = None
        if found.close_time is not None:
            run = await self._snapshot(execution_id, await self._handle(execution_id))
            error, output = run.error, run.output
        return execution_info(found, memo, error=error, output=output)

    async def list(self, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Runs from Temporal's visibility (`list_workflows` on the `perdure.agent` type), newest first.

        `error` and `output` are left out here (they need one request per run): `describe` has them.
        """
        extra, memo_status = status_query(status)
        client = await self.client()
        query = f"WorkflowType = '{WORKFLOW_NAME}'{extra}"
        rows: list[dict[str, Any]] = []
        async for execution in client.list_workflows(query, limit=None if memo_status else limit):
            memo = await run_memo(execution)
            if memo_status is not None and (memo.status if memo else "running") != memo_status:
                continue
            rows.append(execution_info(execution, memo))
        rows.sort(key=lambda row: row["created_at"] or "", reverse=True)
        return rows[:limit] if limit is not None else rows

    async def approve(
        self, execution_id: str, tool_call_id: str, *, args: Mapping[str, Any] | None = None
    ) -> None:
        """Approve a paused call (with `args` instead of the model's), through the `perdure.decide` update."""
        override = dict(args) if args is not None else None
        await self._decide(
            execution_id, CallDecision(tool_call_id=tool_call_id, approved=True, override_args=override)
        )

    async def deny(self, execution_id: str, tool_call_id: str, *, message: str | None = None) -> None:
        """Deny a paused call; the model is told `message` (pydantic-ai's default text when None)."""
        await self._decide(
            execution_id, CallDecision(tool_call_id=tool_call_id, approved=False, message=message)
        )

    async def _decide(self, execution_id: str, decision: CallDecision) -> None:
        handle = await self._handle(execution_id)
        try:
            await handle.execute_update(DECIDE_UPDATE, decision)
        except WorkflowUpdateFailedError as exc:
            raise ExecutionConflictError(
                execution_id,
                f"Execution {execution_id!r} refused the decision on call {decision.tool_call_id!r}: "
                f"{error_text(exc)}. See its state with `perdure show {execution_id} --engine temporal`.",
            ) from exc
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:
                if await self._describe(execution_id) is None:
                    raise self._not_found(execution_id) from exc
                raise ExecutionConflictError(
                    execution_id,
                    f"Execution {execution_id!r} is closed; there is nothing to approve or deny "
                    f"({exc.message}).",
                ) from exc
            raise

    async def cancel(self, execution_id: str, reason: str = "") -> None:
        """Request cancellation; the run ends `cancelled` (a running activity is cancelled too)."""
        found = await self._describe(execution_id)
        if found is None:
            raise self._not_found(execution_id)
        if found.close_time is not None:  # Temporal accepts a cancel of a closed run silently
            status = perdure_status(found.status, None).value
            raise ExecutionConflictError(
                execution_id,
                f"Execution {execution_id!r} is already closed ({status}); nothing to cancel.",
                status=status,
            )
        await (await self._handle(execution_id)).cancel(reason=reason)

    # ---- worker side -----------------------------------------------------------------------------

    def worker(self, client: Client, agents: Sequence[AbstractAgent[Any, Any]]) -> Worker:
        """A Temporal worker for these agents' runs on the engine's task queue (not started)."""
        return build_worker(client, self.options, agents)

    async def serve(self, agents: Sequence[AbstractAgent[Any, Any]]) -> None:
        """Run a worker for these agents until cancelled; a cancel lets running activities end first."""
        worker = self.worker(await self.client(), agents)
        await worker.run()
