"""The `prefect` engine: perdure agents as Prefect flows, their model requests and tools as tasks.

`PerdureDurability(engine="prefect")` binds pydantic-ai's `PrefectDurability` (name and `models=`
carried over): every model request and tool call of the agent becomes a Prefect task whose result
is persisted and cached under the flow run's id. A run is one flow run of the `perdure-agent` flow,
named after perdure's execution id (also its idempotency key); clients create it `Scheduled`,
a worker (`serve`) claims and executes it, and a worker that finds a run whose owner process died
executes that same flow run again: the finished tasks replay from their cached results.

The Prefect API is Prefect's own setting: `PREFECT_API_URL` of a `prefect server start` (clients
and workers in different processes need one), else an ephemeral server per process. Task results
live in Prefect's result storage (`PREFECT_HOME/storage` by default): workers that take over each
other's runs, and clients reading outputs, must share it. Tool approvals (deferred tools) are not
supported on this engine; see `docs/engines-prefect.md`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import FlowCreate, FlowRunCreate
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterName,
)
from prefect.client.schemas.objects import Flow, FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.states import Cancelled, Cancelling, Scheduled, to_state_create
from pydantic_ai.durable_exec.prefect import PrefectDurability

from ..errors import ExecutionNotFoundError, UserError
from ..records import ExecutionStatus
from ._base import Engine, EngineRun
from ._prefect_flow import ACTIVE_STATES, FLOW_NAME, TAG, perdure_agent_flow, register_agent, status_of
from ._prefect_worker import PrefectWorker

if TYPE_CHECKING:
    from pydantic_ai.agent.abstract import AbstractAgent
    from pydantic_ai.capabilities.abstract import AbstractCapability

    from ..durable.capability import PerdureDurability

__all__ = ["PrefectEngine"]

_WAIT_INTERVAL = 0.25
_CANCEL_TIMEOUT = 30.0
"""Seconds `cancel` waits for the worker of a running run to stop it."""


class PrefectEngine(Engine):
    """Runs perdure agents as Prefect flow runs (pydantic-ai's `PrefectDurability`)."""

    name: ClassVar[str] = "prefect"
    extra: ClassVar[str] = "prefect"

    # ---- build time ------------------------------------------------------------------------------

    def bind(
        self, capability: PerdureDurability[Any], agent: AbstractAgent[Any, Any]
    ) -> AbstractCapability[Any]:
        """pydantic-ai's `PrefectDurability` for `agent`, with the capability's name and models.

        The agent is registered in this process, so a worker (or an in-process flow run) finds it
        by name. perdure's `retry=` / `tool_retry=` / circuit breaker do not apply on Prefect
        (configure Prefect task retries with `PrefectDurability` directly if needed).
        """
        models: Mapping[str, Any] | None = capability.extra_models or None
        handler = capability.user_event_handler
        durability: PrefectDurability[Any] = PrefectDurability(
            name=capability.name or None, models=models, event_stream_handler=handler
        )
        bound = durability.for_agent(agent)
        register_agent(agent)
        return bound

    # ---- client side -----------------------------------------------------------------------------

    async def start_agent(
        self, agent: AbstractAgent[Any, Any], prompt: str, *, execution_id: str, **run_kwargs: Any
    ) -> str:
        """Create the `Scheduled` flow run (a second start returns the same run); its id as a string."""
        if not agent.name:
            raise UserError("An agent needs a stable `name` to run on the prefect engine.")
        try:
            json.dumps(run_kwargs)
        except TypeError as exc:
            raise UserError(
                "On the prefect engine run keyword arguments become flow parameters and must be "
                f"JSON-compatible (pass a model as its key in PerdureDurability(models=...)): {exc}"
            ) from exc
        parameters: dict[str, Any] = {"agent": agent.name, "prompt": prompt, "execution_id": execution_id}
        if run_kwargs:
            parameters["run_kwargs"] = run_kwargs
        async with get_client() as client:
            response = await client.request("POST", "/flows/", json=FlowCreate(name=FLOW_NAME).model_dump())
            flow_id = Flow.model_validate(response.json()).id
            create = FlowRunCreate(
                flow_id=flow_id,
                name=execution_id,
                parameters=parameters,
                tags=[TAG, f"agent:{agent.name}"],
                state=to_state_create(Scheduled()),
                idempotency_key=execution_id,
            )
            response = await client.request(
                "POST", "/flow_runs/", json=create.model_dump(mode="json", exclude_unset=True)
            )
            return str(FlowRun.model_validate(response.json()).id)

    async def result(self, execution_id: str, *, wait: bool = True) -> EngineRun[Any]:
        """The run's state; with `wait`, polls until the flow run ended."""
        async with get_client() as client:
            flow_run = await self._flow_run(client, execution_id)
            if flow_run is None:
                raise ExecutionNotFoundError(f"No Prefect flow run for execution {execution_id!r}.")
            while wait and _state_type(flow_run) in ACTIVE_STATES:
                await asyncio.sleep(_WAIT_INTERVAL)
                flow_run = await client.read_flow_run(flow_run.id)
            return await _engine_run(flow_run)

    async def describe(self, execution_id: str) -> dict[str, Any] | None:
        """The flow run as an info dict (None when no run has this execution id)."""
        async with get_client() as client:
            flow_run = await self._flow_run(client, execution_id)
        return _info(flow_run) if flow_run is not None else None

    async def list(self, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The `perdure-agent` flow runs, most recent first, optionally of one perdure status."""
        try:
            wanted = ExecutionStatus(status) if status is not None else None
        except ValueError:
            choices = ", ".join(item.value for item in ExecutionStatus)
            raise UserError(f"Unknown status {status!r}: choose one of {choices}.") from None
        flow_runs: list[FlowRun] = []
        async with get_client() as client:
            offset = 0
            while True:
                page = await client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
                    sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                    limit=200,
                    offset=offset,
                )
                flow_runs.extend(run for run in page if wanted is None or _status(run) is wanted)
                offset += len(page)
                if len(page) < 200 or (limit is not None and len(flow_runs) >= limit):
                    break
        return [_info(run) for run in flow_runs[:limit]]

    async def approve(
        self, execution_id: str, tool_call_id: str, *, args: Mapping[str, Any] | None = None
    ) -> None:
        """Not supported: see `deny`."""
        raise _no_approvals(execution_id)

    async def deny(self, execution_id: str, tool_call_id: str, *, message: str | None = None) -> None:
        """Not supported: pydantic-ai's Prefect integration ends a flow run with `DeferredToolRequests`.

        Approving would need a second flow run continuing the first one's message history, which
        this engine does not build; use the embedded, Temporal or DBOS engine for approvals.
        """
        raise _no_approvals(execution_id)

    async def cancel(self, execution_id: str, reason: str = "") -> None:
        """Cancel the run: one not started yet becomes `Cancelled`, a running one `Cancelling`.

        The worker executing a `Cancelling` run stops it and marks it `Cancelled`.
        """
        async with get_client() as client:
            flow_run = await self._flow_run(client, execution_id)
            if flow_run is None:
                raise ExecutionNotFoundError(f"No Prefect flow run for execution {execution_id!r}.")
            state_type = _state_type(flow_run)
            if state_type in (StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED):
                await client.set_flow_run_state(flow_run.id, Cancelled(message=reason or None), force=True)
            elif state_type is StateType.RUNNING:
                await client.set_flow_run_state(flow_run.id, Cancelling(message=reason or None))
                await self._settle_cancel(client, flow_run.id, reason)

    # ---- worker side -----------------------------------------------------------------------------

    async def serve(self, agents: Sequence[AbstractAgent[Any, Any]]) -> None:
        """Execute the agents' flow runs in this process until cancelled, taking over orphaned ones."""
        for agent in agents:
            register_agent(agent)
        async with get_client() as client:
            await PrefectWorker(client, [agent.name or "" for agent in agents]).run_forever()

    async def run_in_process(
        self, agent: AbstractAgent[Any, Any], prompt: str, *, execution_id: str, **run_kwargs: Any
    ) -> Any:
        """Run the agent's flow in this process and return its output (no worker involved).

        A flow run named `execution_id` is created and executed here; with `PREFECT_API_URL` unset
        Prefect starts an ephemeral server for the process. Nothing takes the run over if this
        process dies: use `start_agent` and a worker (`serve`) for that.
        """
        register_agent(agent)
        flow = perdure_agent_flow.with_options(flow_run_name=execution_id)
        return await flow(
            agent=agent.name or "", prompt=prompt, execution_id=execution_id, run_kwargs=run_kwargs or None
        )

    @staticmethod
    async def _settle_cancel(client: PrefectClient, flow_run_id: UUID, reason: str) -> None:
        """Wait for the worker to stop a `Cancelling` run; a run it left `Crashed` becomes `Cancelled`."""
        deadline = asyncio.get_running_loop().time() + _CANCEL_TIMEOUT
        while asyncio.get_running_loop().time() < deadline:
            flow_run = await client.read_flow_run(flow_run_id)
            state_type = _state_type(flow_run)
            if state_type is StateType.CRASHED:
                await client.set_flow_run_state(flow_run_id, Cancelled(message=reason or None), force=True)
                return
            if state_type is not StateType.CANCELLING:
                return
            await asyncio.sleep(_WAIT_INTERVAL)

    @staticmethod
    async def _flow_run(client: PrefectClient, execution_id: str) -> FlowRun | None:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[execution_id])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=1,
        )
        return runs[0] if runs else None


def _no_approvals(execution_id: str) -> UserError:
    return UserError(
        f"The prefect engine does not support tool approvals (execution {execution_id!r}): pydantic-ai's "
        "Prefect integration ends the flow run with DeferredToolRequests instead of waiting. Use the "
        "embedded, temporal or dbos engine for agents with approval-required tools."
    )


def _state_type(flow_run: FlowRun) -> StateType | None:
    return flow_run.state.type if flow_run.state is not None else None


def _status(flow_run: FlowRun) -> ExecutionStatus:
    return status_of(_state_type(flow_run))


def _info(flow_run: FlowRun) -> dict[str, Any]:
    state = flow_run.state
    status = _status(flow_run)
    error = state.message if state is not None and status is ExecutionStatus.FAILED else None
    return {
        "execution_id": flow_run.name,
        "engine": "prefect",
        "status": status.value,
        "error": error,
        "created_at": Engine.timestamp(flow_run.created),
        "updated_at": Engine.timestamp(flow_run.updated),
        "timestamp": Engine.timestamp(flow_run.updated),
        "step_name": state.name if state is not None else "",
        "attempts": flow_run.run_count,
        "metadata": {
            "flow_run_id": str(flow_run.id),
            "state": state.type.value if state is not None else None,
            "state_name": state.name if state is not None else None,
            "agent": flow_run.parameters.get("agent"),
            "worker": flow_run.infrastructure_pid,
            "tags": list(flow_run.tags),
        },
    }


async def _engine_run(flow_run: FlowRun) -> EngineRun[Any]:
    info = _info(flow_run)
    run: EngineRun[Any] = EngineRun(
        execution_id=flow_run.name, engine="prefect", status=_status(flow_run), info=info["metadata"]
    )
    state = flow_run.state
    if state is None:
        return run
    if run.status is ExecutionStatus.COMPLETED:
        run.output = await state.aresult(raise_on_failure=False)
    elif run.status is ExecutionStatus.FAILED:
        run.error = state.message or state.name
    return run
