"""What every distributed engine adapter provides, and what it returns.

perdure's own journal (the `embedded` engine) stays the default. An engine adapter lets the same
pydantic-ai agent, carrying the same `PerdureDurability()` capability, run on an existing
distributed engine instead: `bind` swaps the capability for the engine's own durability when the
agent is built, and the client methods start, observe and steer runs through the engine's API. The
engine keeps the state; perdure's storages are not used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from ..durable.engine import AttemptResult
from ..errors import UserError
from ..records import ErrorInfo, ExecutionRecord, ExecutionStatus, PendingCall, PendingDecision

if TYPE_CHECKING:
    from pydantic_ai.agent.abstract import AbstractAgent
    from pydantic_ai.capabilities.abstract import AbstractCapability

    from ..durable.capability import PerdureDurability

__all__ = ["ENGINE_NAMES", "Engine", "EngineName", "EngineOptions", "EngineRun"]

EngineName = Literal["embedded", "temporal", "dbos", "prefect"]
ENGINE_NAMES: tuple[str, ...] = ("embedded", "temporal", "dbos", "prefect")

OutputT = TypeVar("OutputT")


@dataclass(frozen=True)
class EngineOptions:
    """Where an engine's server or database is; defaults come from perdure's settings.

    Attributes:
        temporal_address: HOST:PORT of the Temporal frontend.
        temporal_namespace: Temporal namespace.
        temporal_task_queue: Task queue the perdure workflows and activities are served on.
        temporal_activity_timeout: Seconds an activity (model request, tool call) may run per attempt
            (Temporal `start_to_close_timeout`); None: 60 (setting `PERDURE_TEMPORAL_ACTIVITY_TIMEOUT`).
        temporal_heartbeat_timeout: Seconds without a heartbeat after which Temporal retries an
            activity elsewhere (a dead worker is noticed this fast); None: pydantic-ai's default (30 s,
            model requests only; setting `PERDURE_TEMPORAL_HEARTBEAT_TIMEOUT`).
        temporal_sticky_queue_timeout: Seconds a workflow task waits on a worker's sticky queue before
            going to any worker (how fast a run moves on after its worker died); None: Temporal's 10 s
            (setting `PERDURE_TEMPORAL_STICKY_TIMEOUT`).
        temporal_connect_timeout: Seconds to wait for the Temporal server when connecting.
        temporal_max_history: History events after which a run continues as new before its next
            model request; None: when Temporal suggests it (setting `PERDURE_TEMPORAL_MAX_HISTORY`).
        dbos_database_url: DBOS system database (`sqlite:///...` or `postgresql://...`); None lets
            the DBOS adapter pick `sqlite:///perdure-dbos.sqlite` in the current directory.
        dbos_app_name: DBOS application name (its workflows recover by application version).
        dbos_application_version: DBOS application version; None lets DBOS hash the registered
            workflow code (recovery only resumes runs of the same version).
        dbos_queue: A DBOS queue: clients enqueue runs on it (nothing runs in the starting process)
            and `perdure worker --engine dbos` takes them; None runs each run in the process that
            starts it (setting `PERDURE_DBOS_QUEUE`).

    """

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "perdure"
    temporal_activity_timeout: float | None = None
    temporal_heartbeat_timeout: float | None = None
    temporal_sticky_queue_timeout: float | None = None
    temporal_connect_timeout: float = 10.0
    temporal_max_history: int | None = None
    dbos_database_url: str | None = None
    dbos_app_name: str = "perdure"
    dbos_application_version: str | None = None
    dbos_queue: str | None = None

    @classmethod
    def from_settings(cls, **overrides: Any) -> EngineOptions:
        """Options from `perdure.settings()`, with explicit non-None arguments winning."""
        from ..settings import settings

        current = settings()
        values: dict[str, Any] = {
            "temporal_address": current.temporal_address,
            "temporal_namespace": current.temporal_namespace,
            "temporal_task_queue": current.temporal_task_queue,
            "temporal_activity_timeout": current.temporal_activity_timeout,
            "temporal_heartbeat_timeout": current.temporal_heartbeat_timeout,
            "temporal_sticky_queue_timeout": current.temporal_sticky_timeout,
            "temporal_max_history": current.temporal_max_history,
            "dbos_database_url": current.dbos_database_url,
            "dbos_queue": current.dbos_queue,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


@dataclass(eq=False)
class EngineRun(AttemptResult[OutputT]):
    """The state of one run on an engine: what `DurableExecution.run_agent_async` returns there.

    An `AttemptResult`, so code written for the embedded engine reads it the same way (`output`,
    `paused`, `head.status`, `head.pending`, `replay`); `head` is built from the engine's state, and
    `replay` is empty (the engines keep no replay statistics). `result` (pydantic-ai's run result
    with its messages) stays in the engine and raises `UserError`.

    Attributes:
        execution_id: The engine's id of the run (Temporal workflow id, DBOS workflow id).
        engine: Name of the engine.
        status: perdure's status vocabulary: `success` (running or done), `completed`, `paused`,
            `failed`, `cancelled`.
        output: The agent's output once completed (pydantic-ai's `DeferredToolRequests` when paused).
        pending: Tool calls waiting for approval when paused.
        error: One-line error of a failed run.
        info: The engine's own details (history length, run id, ...), JSON-compatible.

    """

    execution_id: str
    engine: str
    status: ExecutionStatus
    output: OutputT | None = None  # type: ignore[assignment]  # a field here, a property of AttemptResult
    pending: list[PendingCall] = field(default_factory=list)
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def paused(self) -> bool:
        """The run waits for approval decisions (`Engine.approve` / `Engine.deny`)."""
        return self.status is ExecutionStatus.PAUSED

    @property
    def completed(self) -> bool:
        """The run finished with an output."""
        return self.status is ExecutionStatus.COMPLETED

    @property
    def head(self) -> ExecutionRecord:  # type: ignore[override]  # an attribute of AttemptResult, derived here
        """The run's state as a head record (what `AttemptResult.head` is on the embedded engine)."""
        return ExecutionRecord(
            execution_id=self.execution_id,
            status=self.status,
            output=self.output if self.completed else None,
            error=ErrorInfo(type="EngineError", message=self.error) if self.error else None,
            pending=PendingDecision(kind="approval", calls=list(self.pending)) if self.pending else None,
            metadata={"engine": self.engine},
        )

    @property
    def result(self) -> Any:  # type: ignore[override]  # an attribute of AttemptResult
        """pydantic-ai's run result is not available on an engine: its messages stay in the engine."""
        raise UserError(
            f"Execution {self.execution_id!r} ran on the {self.engine} engine: its message history stays "
            f"there; read `output` or `status` instead of `result`."
        )


class Engine(ABC):
    """A distributed engine that runs perdure agents; one instance per client or worker process."""

    name: ClassVar[str]
    """Engine name as `PERDURE_ENGINE` spells it."""
    extra: ClassVar[str]
    """The perdure extra that installs the engine's packages (`temporal`, `dbos`, `prefect`)."""

    def __init__(self, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions.from_settings()

    # ---- build time ------------------------------------------------------------------------------

    @abstractmethod
    def bind(
        self, capability: PerdureDurability[Any], agent: AbstractAgent[Any, Any]
    ) -> AbstractCapability[Any]:
        """The capability the agent runs with on this engine, in place of `PerdureDurability`.

        Called from `PerdureDurability.for_agent` when the agent is constructed, with the user's
        capability (its `name`, `models`, retry policies) to carry over.
        """

    # ---- client side -----------------------------------------------------------------------------

    @abstractmethod
    async def start_agent(
        self, agent: AbstractAgent[Any, Any], prompt: str, *, execution_id: str, **run_kwargs: Any
    ) -> str:
        """Start the agent on the engine under `execution_id` (idempotent: a second start is a no-op)."""

    @abstractmethod
    async def result(self, execution_id: str, *, wait: bool = True) -> EngineRun[Any]:
        """The run's state; with `wait`, once it completed, failed, paused or was cancelled."""

    async def run_agent(
        self, agent: AbstractAgent[Any, Any], prompt: str, *, execution_id: str, **run_kwargs: Any
    ) -> EngineRun[Any]:
        """Start (or join) the run and wait until it completes, fails or pauses."""
        await self.start_agent(agent, prompt, execution_id=execution_id, **run_kwargs)
        return await self.result(execution_id, wait=True)

    @abstractmethod
    async def describe(self, execution_id: str) -> dict[str, Any] | None:
        """The run as `ExecutionRecord.info()` describes an embedded one (None when unknown)."""

    @abstractmethod
    async def list(self, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Runs as info dicts, most recent first, from the engine's own visibility."""

    @abstractmethod
    async def approve(
        self, execution_id: str, tool_call_id: str, *, args: Mapping[str, Any] | None = None
    ) -> None:
        """Approve a paused tool call (optionally with edited arguments)."""

    @abstractmethod
    async def deny(self, execution_id: str, tool_call_id: str, *, message: str | None = None) -> None:
        """Deny a paused tool call; the model is told `message`."""

    @abstractmethod
    async def cancel(self, execution_id: str, reason: str = "") -> None:
        """Cancel the run through the engine."""

    # ---- worker side -----------------------------------------------------------------------------

    @abstractmethod
    async def serve(self, agents: Sequence[AbstractAgent[Any, Any]]) -> None:
        """Serve these agents' runs in this process until cancelled (`perdure worker --engine`)."""

    async def close(self) -> None:
        """Release the client connection or the engine runtime."""
        return None

    @staticmethod
    def timestamp(value: datetime | None) -> str | None:
        """ISO form of an engine timestamp, as `info()` dicts carry them."""
        return value.isoformat() if value is not None else None
