"""The worker loop of the `prefect` engine: claim scheduled flow runs, re-run orphaned ones.

perdure's clients create `perdure-agent` flow runs in the `Scheduled` state (no deployment, no work
pool); a worker claims one by moving it to `Pending` (Prefect's orchestration refuses a second
`Pending`, so two workers never both claim it), writes `perdure:<host>:<pid>` into the run's
`infrastructure_pid` and executes it in its event loop.

A worker that was killed leaves its runs `Running`. Each poll a worker looks for running runs whose
owner is a process of this host that no longer exists, sets them back to `Scheduled` and claims them
like new ones: the same flow run executes again, and pydantic-ai's task cache (keyed by the flow
run id) replays every task that had finished. Owners on other hosts cannot be checked from here:
those runs need an operator (`prefect flow-run` or the engine's `cancel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas import OrchestrationResult
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.flow_engine import run_flow_async
from prefect.states import Cancelled, Pending, Scheduled

from ._prefect_flow import FLOW_NAME, perdure_agent_flow

__all__ = ["OWNER_PREFIX", "PrefectWorker", "owner_alive", "owner_id"]

logger = logging.getLogger("perdure.engines.prefect")

OWNER_PREFIX = "perdure:"
"""Prefix of the `infrastructure_pid` a perdure worker writes into the flow runs it executes."""


def owner_id() -> str:
    """The owner id of this process, as flow runs record it: `perdure:<host>:<pid>`."""
    return f"{OWNER_PREFIX}{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str | None) -> bool | None:
    """Whether a run's owner process still exists: None when that cannot be told from this host."""
    if not owner or not owner.startswith(OWNER_PREFIX):
        return None
    host, _, pid_text = owner[len(OWNER_PREFIX) :].rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _runs_filter(*states: StateType) -> tuple[FlowFilter, FlowRunFilter]:
    return (
        FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
        FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states)))),
    )


class PrefectWorker:
    """Executes the `perdure-agent` flow runs of the served agents in this process."""

    def __init__(self, client: PrefectClient, agents: Iterable[str], *, poll_interval: float = 0.5) -> None:
        self.client = client
        self.agents = frozenset(agents)
        self.poll_interval = poll_interval
        self.owner = owner_id()
        self.active: dict[UUID, asyncio.Task[Any]] = {}

    async def run_forever(self) -> None:
        """Poll until cancelled; on the way out, hand the runs in flight back to other workers.

        Their flows are stopped (Prefect records them `Crashed`) and set back to `Scheduled`, so the
        next worker runs them again and replays their finished tasks.
        """
        try:
            while True:
                await self.poll_once()
                await asyncio.sleep(self.poll_interval)
        finally:
            in_flight = {run_id: task for run_id, task in self.active.items() if not task.done()}
            for task in in_flight.values():
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight.values(), return_exceptions=True)
            for run_id in in_flight:
                flow_run = await self.client.read_flow_run(run_id)
                if flow_run.state is not None and flow_run.state.type is StateType.CRASHED:
                    await self.client.set_flow_run_state(run_id, Scheduled(), force=True)
                    logger.info("flow run %s handed back (Scheduled) as this worker stops", run_id)

    async def poll_once(self) -> None:
        """Recover orphaned runs, claim scheduled ones, and stop the ones being cancelled."""
        self.active = {run_id: task for run_id, task in self.active.items() if not task.done()}
        await self._recover_orphans()
        await self._stop_cancelling()
        flows, runs = _runs_filter(StateType.SCHEDULED)
        scheduled = await self.client.read_flow_runs(
            flow_filter=flows, flow_run_filter=runs, sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=20
        )
        for flow_run in scheduled:
            if flow_run.id not in self.active and flow_run.parameters.get("agent") in self.agents:
                await self._claim(flow_run)

    async def _claim(self, flow_run: FlowRun) -> None:
        result: OrchestrationResult[Any] = await self.client.set_flow_run_state(flow_run.id, Pending())
        if result.status is not SetStateStatus.ACCEPT:
            return  # another worker claimed it first
        await self.client.update_flow_run(flow_run.id, infrastructure_pid=self.owner)
        logger.info("executing flow run %s (%s)", flow_run.id, flow_run.name)
        self.active[flow_run.id] = asyncio.create_task(self._execute(flow_run))

    async def _execute(self, flow_run: FlowRun) -> None:
        try:
            await run_flow_async(
                perdure_agent_flow, flow_run=flow_run, parameters=flow_run.parameters, return_type="state"
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # the flow engine records the failure in the run's state
            logger.exception("flow run %s ended with an error", flow_run.id)

    async def _recover_orphans(self) -> None:
        flows, runs = _runs_filter(StateType.RUNNING, StateType.PENDING, StateType.CANCELLING)
        for flow_run in await self.client.read_flow_runs(flow_filter=flows, flow_run_filter=runs, limit=200):
            if flow_run.id in self.active or owner_alive(flow_run.infrastructure_pid) is not False:
                continue
            state_type = flow_run.state.type if flow_run.state else None
            if state_type is StateType.CANCELLING:
                await self.client.set_flow_run_state(flow_run.id, Cancelled(), force=True)
                continue
            if flow_run.parameters.get("agent") not in self.agents:
                continue
            logger.warning(
                "flow run %s (%s) lost its worker %s: running it again",
                flow_run.id,
                flow_run.name,
                flow_run.infrastructure_pid,
            )
            await self.client.set_flow_run_state(flow_run.id, Scheduled(), force=True)
            await self._claim(flow_run)

    async def _stop_cancelling(self) -> None:
        for run_id, task in list(self.active.items()):
            flow_run = await self.client.read_flow_run(run_id)
            if flow_run.state is not None and flow_run.state.type is StateType.CANCELLING:
                task.cancel()  # the flow engine records `Crashed`, which `Cancelled` then replaces
                with contextlib.suppress(BaseException):
                    await task
                await self.client.set_flow_run_state(
                    run_id, Cancelled(message=flow_run.state.message), force=True
                )
                self.active.pop(run_id, None)
