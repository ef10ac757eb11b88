"""perdure agents on DBOS: pydantic-ai's DBOS durability, plus every tool call as a DBOS step.

`PerdureDurability()` on an agent becomes, with `PERDURE_ENGINE=dbos`, pydantic-ai's
`DBOSDurability` (model requests as DBOS steps) combined with perdure's `DBOSToolSteps` (each
function tool call as a DBOS step, with idempotency keys and the non-idempotent guard). Runs are
the DBOS workflow `perdure.agent` (see `_dbos_workflow`), keyed by the execution id as DBOS workflow
id; their state is DBOS's workflow tables in the system database (SQLite for development,
PostgreSQL for production). perdure's storages are not used.

A process that starts runs (`start_agent`, `run_agent`, `serve`) launches DBOS, which also recovers
the PENDING runs a crashed worker left; a process that only observes or steers runs (`describe`,
`list`, `approve`, `deny`, `cancel`, `result`) uses a `DBOSClient` unless it launched DBOS itself.
See docs/engines-dbos.md for what maps onto DBOS and what does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from dbos import DBOS, DBOSClient, EnqueueOptions, SetWorkflowID
from pydantic_ai.capabilities import CombinedCapability
from pydantic_ai.durable_exec.dbos import DBOSDurability, StepConfig
from pydantic_ai.usage import UsageLimits
from sqlalchemy.exc import SQLAlchemyError

from .._redact import mask_url
from ..errors import (
    ExecutionCompletedError,
    ExecutionConflictError,
    ExecutionNotFoundError,
    StorageUnavailableError,
    UserError,
)
from ..records import ExecutionStatus
from . import _dbos_runtime as runtime
from ._base import Engine, EngineRun
from ._dbos_status import SETTLED, STATUS_FILTER, needs_event, to_info, to_run
from ._dbos_tools import DBOSToolSteps
from ._dbos_workflow import (
    DECISION_TOPIC,
    STATUS_EVENT,
    WORKFLOW_NAME,
    agent_name_of,
    perdure_agent_workflow,
    register_agent,
    registered_agent,
)

if TYPE_CHECKING:
    from dbos._sys_db import WorkflowStatus
    from pydantic_ai.agent.abstract import AbstractAgent
    from pydantic_ai.capabilities.abstract import AbstractCapability

    from ..durable.capability import PerdureDurability
    from ..durable.retry import RetryPolicy

__all__ = ["DBOSEngine"]

_RUN_KWARGS = ("usage_limits", "model")


def _model_step_config(policy: RetryPolicy | None) -> StepConfig:
    """The model retry policy as DBOS step retries (jitter and `max_delay` do not map)."""
    if policy is None or policy.max_retries == 0:
        return {}
    config: dict[str, Any] = {
        "retries_allowed": True,
        "max_attempts": policy.max_retries + 1,
        "interval_seconds": policy.retry_delay,
        "backoff_rate": 2.0 if policy.exponential_backoff else 1.0,
        "should_retry": policy.should_retry,  # DBOS.step option; pydantic-ai passes step config through
    }
    return cast(StepConfig, config)


class DBOSEngine(Engine):
    """perdure's adapter of DBOS (see the module docstring); one per process and system database."""

    name: ClassVar[str] = "dbos"
    extra: ClassVar[str] = "dbos"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._client: DBOSClient | None = None
        self._sent: dict[tuple[str, int], set[str]] = {}  # decisions sent per (execution, round)

    # ---- configuration ---------------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        """The DBOS system database (`dbos_database_url`, default `sqlite:///perdure-dbos.sqlite`)."""
        return self.options.dbos_database_url or runtime.DEFAULT_URL

    @property
    def runtime_key(self) -> runtime.RuntimeKey:
        """Identifies the DBOS runtime this engine launches."""
        return runtime.RuntimeKey(
            self.database_url, self.options.dbos_app_name, self.options.dbos_application_version
        )

    def launch(self) -> None:
        """Launch DBOS in this process (recovering PENDING runs of the same application version)."""
        runtime.ensure_launched(self.runtime_key)

    def _queue_client(self) -> DBOSClient:
        """A client on the system database, launched or not: enqueueing is a client's job."""
        if self._client is None:
            self._client = runtime.open_client(self.database_url)
        return self._client

    def _api(self) -> Any:
        """DBOS itself when this process runs it on our database, else a client (no workflow runs here)."""
        if runtime.launched_key() == self.runtime_key:
            return DBOS
        if self._client is None:
            self._client = runtime.open_client(self.database_url)
        return self._client

    # ---- build time ------------------------------------------------------------------------------

    def bind(
        self, capability: PerdureDurability[Any], agent: AbstractAgent[Any, Any]
    ) -> AbstractCapability[Any]:
        """pydantic-ai's `DBOSDurability` for model requests plus `DBOSToolSteps` for tool calls.

        Tools of one model response run sequentially so that step positions (and the idempotency keys
        derived from them) are the same on every replay.
        """
        name = capability.name or agent.name
        if not name:
            raise UserError(
                "An agent on the DBOS engine needs a stable name (Agent(..., name='x') or "
                "PerdureDurability(name='x')): it registers the agent for recovery and names its DBOS steps."
            )
        models = capability.extra_models or None  # what PerdureDurability(models=) kept
        durability: DBOSDurability[Any] = DBOSDurability(
            name=name,
            models=models,
            model_step_config=_model_step_config(capability.retry),
            parallel_execution_mode="sequential",
        )
        bound = durability.for_agent(agent)
        register_agent(name, agent)
        return CombinedCapability([DBOSToolSteps(name, tool_retry=capability.tool_retry), bound])

    # ---- client side -----------------------------------------------------------------------------

    async def _status(self, execution_id: str) -> WorkflowStatus | None:
        found = await self._api().list_workflows_async(workflow_ids=[execution_id])
        return found[0] if found else None

    async def _event(self, execution_id: str) -> dict[str, Any] | None:
        value = await self._api().get_event_async(execution_id, STATUS_EVENT, timeout_seconds=0)
        return value if isinstance(value, dict) else None

    async def start_agent(
        self, agent: AbstractAgent[Any, Any], prompt: str, *, execution_id: str, **run_kwargs: Any
    ) -> str:
        """Start `perdure.agent` for the agent under workflow id `execution_id` in this process.

        A second start with the same id does nothing (DBOS would otherwise attach to the run anyway).
        Run options that cross the workflow boundary must be JSON: `usage_limits` (`UsageLimits`) and
        `model` (a model name or a key of `PerdureDurability(models=...)`).
        """
        unknown = sorted(set(run_kwargs) - set(_RUN_KWARGS))
        if unknown:
            raise UserError(
                f"Execution {execution_id!r}: the DBOS engine takes only {', '.join(_RUN_KWARGS)} as run "
                f"options (they are stored as the workflow's JSON input); got {', '.join(unknown)}."
            )
        agent_name = agent_name_of(agent)
        options: dict[str, Any] = {}
        limits = run_kwargs.get("usage_limits")
        if isinstance(limits, UsageLimits):
            options["usage_limits"] = {k: v for k, v in vars(limits).items() if not k.startswith("_")}
        if run_kwargs.get("model") is not None:
            if not isinstance(run_kwargs["model"], str):
                raise UserError(
                    f"Execution {execution_id!r}: pass model= as a string (a model name or a key of "
                    "PerdureDurability(models=...)); a Model instance cannot cross the DBOS workflow "
                    "boundary."
                )
            options["model"] = run_kwargs["model"]
        queue = self.options.dbos_queue
        if queue:  # a worker (`perdure worker --engine dbos`) dequeues and runs it; nothing runs here
            try:
                if await self._status(execution_id) is not None:
                    return execution_id
            except SQLAlchemyError as err:  # a client does not create DBOS's tables: a worker's launch does
                raise StorageUnavailableError(
                    "dbos",
                    f"cannot enqueue execution {execution_id!r}: the DBOS system database at "
                    f"{mask_url(self.database_url)} is not ready ({type(err).__name__}). Start a worker "
                    f"(`perdure worker --engine dbos`) on it first: its launch creates DBOS's tables.",
                ) from err
            enqueue: EnqueueOptions = {
                "workflow_name": WORKFLOW_NAME,
                "queue_name": queue,
                "workflow_id": execution_id,
                "application_name": self.options.dbos_app_name,
            }
            if self.options.dbos_application_version:
                enqueue["app_version"] = self.options.dbos_application_version
            await self._queue_client().enqueue_async(enqueue, agent_name, prompt, options)
            return execution_id
        await asyncio.to_thread(self.launch)
        if await self._status(execution_id) is not None:
            return execution_id
        with SetWorkflowID(execution_id):
            await DBOS.start_workflow_async(perdure_agent_workflow, agent_name, prompt, options)
        return execution_id

    async def result(self, execution_id: str, *, wait: bool = True) -> EngineRun[Any]:
        """The run's state; with `wait`, polls DBOS until it completed, failed, paused or was cancelled."""
        delay = 0.02
        while True:
            status = await self._status(execution_id)
            if status is None:
                raise ExecutionNotFoundError(execution_id, backend="dbos", where=f"({self.database_url})")
            run = await self._run(status)
            if not wait or run.status in SETTLED:
                return run
            if run.paused and not self._decided(execution_id, run):
                return run
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.1)

    def _decided(self, execution_id: str, run: EngineRun[Any]) -> bool:
        """All pending calls were decided by this process: the pause is stale, the run continues."""
        sent = self._sent.get((execution_id, int(run.info.get("approval_round", 0))), set())
        return bool(run.pending) and all(call.tool_call_id in sent for call in run.pending)

    async def _run(self, status: WorkflowStatus) -> EngineRun[Any]:
        event = await self._event(status.workflow_id) if needs_event(status) else None
        return to_run(status, event, self.name)

    async def _info(self, status: WorkflowStatus, *, steps: bool) -> dict[str, Any]:
        recorded = await self._api().list_workflow_steps_async(status.workflow_id) if steps else None
        return to_info(status, await self._run(status), recorded, self.name)

    async def describe(self, execution_id: str) -> dict[str, Any] | None:
        """The run as an info dict from DBOS's workflow status, events and steps (None when unknown)."""
        status = await self._status(execution_id)
        return None if status is None else await self._info(status, steps=True)

    async def list(self, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Runs of `perdure.agent` from DBOS's workflow table, most recent first (paused: filtered here)."""
        wanted = ExecutionStatus(status) if status is not None else None
        dbos_status = STATUS_FILTER[wanted] if wanted is not None else None
        found = await self._api().list_workflows_async(
            name=WORKFLOW_NAME, status=dbos_status, sort_desc=True, load_output=True
        )
        infos: list[dict[str, Any]] = []
        for item in found:
            info = await self._info(item, steps=False)
            if wanted is None or info["status"] == wanted.value:
                infos.append(info)
            if limit is not None and len(infos) >= limit:
                break
        return infos

    async def _decide(self, execution_id: str, tool_call_id: str, decision: dict[str, Any]) -> None:
        status = await self._status(execution_id)
        if status is None:
            raise ExecutionNotFoundError(execution_id, backend="dbos", where=f"({self.database_url})")
        run = await self._run(status)
        ids = [call.tool_call_id for call in run.pending]
        if not run.paused or tool_call_id not in ids:
            raise ExecutionConflictError(
                execution_id,
                f"Execution {execution_id!r} is {run.status.value}"
                + (f" waiting for {ids}" if run.paused else "")
                + f", not waiting for a decision on call {tool_call_id!r}; nothing was sent. "
                "Check the pending calls with describe() / `perdure show --engine dbos`.",
                status=run.status.value,
            )
        round_no = int(run.info["approval_round"])
        message = {"round": round_no, "tool_call_id": tool_call_id, "decision": decision}
        key = f"{execution_id}:{round_no}:{tool_call_id}"
        await self._api().send_async(execution_id, message, DECISION_TOPIC, idempotency_key=key)
        self._sent.setdefault((execution_id, round_no), set()).add(tool_call_id)

    async def approve(
        self, execution_id: str, tool_call_id: str, *, args: Mapping[str, Any] | None = None
    ) -> None:
        """Send an approval (optionally with edited arguments) to the paused run."""
        decision: dict[str, Any] = {"approved": True}
        if args is not None:
            decision["override_args"] = dict(args)
        await self._decide(execution_id, tool_call_id, decision)

    async def deny(self, execution_id: str, tool_call_id: str, *, message: str | None = None) -> None:
        """Send a denial to the paused run; the model is told `message`."""
        await self._decide(execution_id, tool_call_id, {"approved": False, "message": message})

    async def cancel(self, execution_id: str, reason: str = "") -> None:
        """Cancel through DBOS: the run stops before its next step and ends `cancelled`.

        DBOS has no field for the reason; it is not stored.
        """
        status = await self._status(execution_id)
        if status is None:
            raise ExecutionNotFoundError(execution_id, backend="dbos", where=f"({self.database_url})")
        if status.status == "SUCCESS":
            raise ExecutionCompletedError(execution_id)
        await self._api().cancel_workflow_async(execution_id)

    # ---- worker side -----------------------------------------------------------------------------

    async def serve(self, agents: Sequence[AbstractAgent[Any, Any]]) -> None:
        """Launch DBOS (recovering this application's PENDING runs) and keep it running until cancelled."""
        for agent in agents:
            registered_agent(agent_name_of(agent))
        await asyncio.to_thread(self.launch)
        if self.options.dbos_queue:  # take the runs that clients enqueue there
            await runtime.declare_queue(self.options.dbos_queue)
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop the DBOS runtime (runs stay PENDING and recover on the next launch) and the client."""
        if self._client is not None:
            self._client.destroy()
            self._client = None
        if runtime.launched_key() == self.runtime_key:
            await asyncio.to_thread(runtime.destroy)
