"""`DurableExecution`: the seed API's handle on one execution and on a storage's executions.

It runs any pydantic-ai agent that carries `PerdureDurability` as a journaled execution
(`run_agent_async` / `resume_agent_async`, from `ExecutionHandle`), and answers the management
questions of the seed API: `get_execution_info`, `list_all_executions`, deletion and recovery.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from pydantic_ai import Agent as PydanticAgent

from .._sync import run_sync, sync_twin
from ..engines import Engine, EngineOptions, get_engine, resolve_engine_name
from ..errors import UserError
from ..records import ExecutionStatus, StepRecord
from ..storage.base import DurableExecutionStorage
from ..storage.memory import InMemoryDurableStorage
from ._cancel import CancelOutcome, cancel_execution_async
from ._streaming import DurableEventStream, StreamedEvent
from .checkpoints import (
    Checkpoint,
    create_checkpoint_async,
    delete_checkpoint_async,
    fork_async,
    get_checkpoint_async,
    get_latest_checkpoint_async,
    list_checkpoints_async,
    parse_checkpoint_id,
    rewind_async,
)
from .decisions import ApprovalDecision, approvals_to_json
from .engine import AttemptResult, ExecutionHandle
from .recovery import recover_interrupted_async

__all__ = ["AttemptResult", "CancelOutcome", "DurableEventStream", "DurableExecution", "StreamedEvent"]

_F = TypeVar("_F", bound=Callable[..., Any])
R = TypeVar("R")
OutputT = TypeVar("OutputT")


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


class DurableExecution(ExecutionHandle):
    """A durable execution bound to a storage backend, with the seed API's management methods.

    Constructed like `ExecutionHandle` (storage, auto_cleanup, debug, execution_id, worker_id,
    lease_ttl, wait_for_lease), which runs its attempts; this class adds `get_execution_info`,
    `list_all_executions`, `delete` and `recover_interrupted`.

    `engine=` (default: the `engine` setting, `PERDURE_ENGINE`) runs agents on a distributed engine
    instead of perdure's journal: `"temporal"`, `"dbos"` or `"prefect"` (see `perdure.engines`).
    Then `run_agent_async` / `resume_agent_async` start, join and steer the run through that engine
    and return an `EngineRun` (`output`, `status`, `paused`, `pending`); `storage` is not used.
    """

    def __init__(
        self,
        storage: DurableExecutionStorage | None = None,
        *,
        engine: str | None = None,
        engine_options: EngineOptions | None = None,
        **options: Any,
    ) -> None:
        self.engine_name = resolve_engine_name(engine)
        """`embedded` (perdure's journal) or the distributed engine this handle runs agents on."""
        self._engine_options = engine_options
        if self.engine_name != "embedded" and storage is None:
            storage = InMemoryDurableStorage()  # the engine keeps the state; nothing is stored here
        super().__init__(storage, **options)

    @property
    def engine(self) -> Engine:
        """The distributed engine's adapter (`UserError` for the embedded engine)."""
        return get_engine(self.engine_name, self._engine_options)

    async def run_agent_async(
        self, agent: PydanticAgent[Any, OutputT], prompt: str, **kwargs: Any
    ) -> AttemptResult[OutputT]:
        """Run `agent` on `prompt` as this execution, resuming it if it exists (see `ExecutionHandle`).

        On a distributed engine the run starts there (joined when it exists) and this waits until it
        completes, fails or pauses; the result is an `EngineRun` (an `AttemptResult`).
        """
        if self.engine_name == "embedded":
            return await super().run_agent_async(agent, prompt, **kwargs)
        return await self.engine.run_agent(agent, prompt, execution_id=self.execution_id, **kwargs)

    async def resume_agent_async(
        self, agent: PydanticAgent[Any, OutputT], **kwargs: Any
    ) -> AttemptResult[OutputT]:
        """Resume this execution (see `ExecutionHandle.resume_agent_async`).

        On a distributed engine, `approvals=` decisions are sent to the paused run (approve, approve
        with edited arguments, deny with a message) and this waits for its next state.
        """
        if self.engine_name == "embedded":
            return await super().resume_agent_async(agent, **kwargs)
        engine = self.engine
        approvals: Mapping[str, ApprovalDecision] = kwargs.pop("approvals", None) or {}
        if kwargs:
            raise UserError(
                f"resume_agent_async on the {self.engine_name} engine takes only approvals=; got "
                f"{', '.join(sorted(kwargs))} (execution {self.execution_id})."
            )
        for call_id, decision in approvals_to_json(dict(approvals)).items():
            if decision.get("approved"):
                await engine.approve(self.execution_id, call_id, args=decision.get("override_args"))
            else:
                await engine.deny(self.execution_id, call_id, message=decision.get("message"))
        return await engine.result(self.execution_id, wait=True)

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
        storage: DurableExecutionStorage | None = None,
        status: ExecutionStatus | str | None = None,
        limit: int | None = None,
        *,
        engine: str | None = None,
    ) -> list[dict[str, Any]]:
        """Info dicts of the storage's executions, most recently updated first.

        Without a storage, and with `engine=` (or the `engine` setting) naming a distributed engine,
        the list comes from that engine's own visibility (Temporal list, DBOS workflow status, Prefect
        flow runs).
        """
        return run_sync(DurableExecution.list_all_executions_async(storage, status, limit, engine=engine))

    @staticmethod
    async def list_all_executions_async(
        storage: DurableExecutionStorage | None = None,
        status: ExecutionStatus | str | None = None,
        limit: int | None = None,
        *,
        engine: str | None = None,
    ) -> list[dict[str, Any]]:
        """Async twin of `list_all_executions`."""
        if storage is None:
            name = resolve_engine_name(engine)
            if name == "embedded":
                raise UserError("list_all_executions needs a storage on the embedded engine.")
            wanted = None if status is None else ExecutionStatus(status).value
            return await get_engine(name).list(wanted, limit)
        return [head.info() for head in await storage.list_executions_async(status, limit)]

    @_HybridMethod
    async def cancel_async(self_or_cls: Any, *args: Any, **options: Any) -> CancelOutcome:
        """Async twin of `cancel`."""
        execution_id, storage, reason = _cancel_target(self_or_cls, args, options)
        return await cancel_execution_async(storage, execution_id, reason, **options)

    @_HybridMethod
    def cancel(self_or_cls: Any, *args: Any, **options: Any) -> CancelOutcome:
        """Cancel an execution: at once when nobody runs it, else at its running attempt's next unit boundary.

        Call as `DurableExecution.cancel(execution_id, storage, reason="")` or `durable.cancel(reason="")`.
        An execution without a live lease (interrupted, paused, failed, not started) is marked
        `cancelled` now, under a lease taken first so no worker starts it meanwhile. A running one gets
        a cancel request that its worker reads on its lease heartbeat (every third of the lease time):
        the unit that is running finishes and is journaled (a sync tool in its thread too), nothing
        after it starts, and the head ends `cancelled` with an `ExecutionCancelledError` naming who
        cancelled and why. Workers never resume a cancelled execution.

        Keyword options: `requested_by` (default `user@host`), `wait` (seconds to wait for a running
        execution to stop). Returns a `CancelOutcome` (`state`: `cancelled`, `requested` or
        `already_cancelled`). Raises `ExecutionNotFoundError`, and `ExecutionCompletedError` for an
        execution that completed already.
        """
        execution_id, storage, reason = _cancel_target(self_or_cls, args, options)
        return run_sync(cancel_execution_async(storage, execution_id, reason, **options))

    def delete(self, *, force: bool = False) -> bool:
        """Delete this execution's records (a running one only with `force`; see `delete_state_async`)."""
        return self.storage.delete_state(self.execution_id, force=force)

    # ---- streaming (see perdure.durable._streaming) -------------------------------------------------

    def run_agent_stream_events(
        self, agent: PydanticAgent[Any, OutputT], prompt: str, **kwargs: Any
    ) -> DurableEventStream[OutputT]:
        """`run_agent_async`, streamed: `async for item in durable.run_agent_stream_events(agent, prompt)`.

        Each item is a `StreamedEvent`: `item.event` is pydantic-ai's event (text arrives as
        `PartDeltaEvent`s while the model produces it; tool calls and results as
        `FunctionToolCallEvent` / `FunctionToolResultEvent`; the last item carries
        `AgentRunResultEvent`), `item.replayed` is True for the part of the run an earlier attempt
        already journaled, which a resume delivers at once, before anything live. After the loop,
        `stream.result` is the `AttemptResult`. The model must support streaming
        (`request_stream`). Each streamed model request is one unit: its final response is journaled,
        so a crash mid-stream re-sends that request only. `kwargs` are `run_agent_async`'s.
        """
        return DurableEventStream(lambda: self.run_agent_async(agent, prompt, **kwargs))

    def resume_agent_stream_events(
        self, agent: PydanticAgent[Any, OutputT], **kwargs: Any
    ) -> DurableEventStream[OutputT]:
        """`resume_agent_async`, streamed like `run_agent_stream_events`: journaled events first, replayed."""
        return DurableEventStream(lambda: self.resume_agent_async(agent, **kwargs))

    # ---- workflows --------------------------------------------------------------------------------
    # `perdure.workflow` builds on this package; it is imported when a workflow runs (no import cycle).

    async def run_workflow_async(self, workflow: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        """Run `workflow(*args, **kwargs)` as this execution (resuming it if it exists); its output.

        Every argument goes to the workflow; use `start_workflow_async` to pass `metadata=` or
        `on_unit=` too.
        """
        return await self.start_workflow_async(workflow, args, kwargs)

    async def start_workflow_async(
        self,
        workflow: Callable[..., Awaitable[R]],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        on_unit: Callable[[StepRecord, bool], None] | None = None,
    ) -> R:
        """`run_workflow_async` with the arguments as a tuple and dict, and the execution's options."""
        from ..workflows._engine import start_workflow

        result: R = await start_workflow(
            self,
            workflow,
            tuple(args),
            dict(kwargs or {}),
            metadata=metadata,
            on_unit=on_unit,
        )
        return result

    async def resume_workflow_async(
        self,
        workflow: Callable[..., Awaitable[Any]] | None = None,
        *,
        allow_changes: Iterable[str] | None = None,
        on_unit: Callable[[StepRecord, bool], None] | None = None,
    ) -> Any:
        """Resume this workflow execution from its journal (in any process) and return its output.

        Args:
            workflow: The workflow to run; default: the one this program registered under the
                execution's recorded name (importing the module that defines it registers it).
            allow_changes: `{"workflow"}` accepts a workflow registered under another name.
            on_unit: Observer called after every unit with `(step, replayed)`.

        """
        from ..workflows._engine import execute_workflow

        return await execute_workflow(
            self,
            workflow,
            allow_changes=allow_changes,
            on_unit=on_unit,
        )

    def run_workflow(self, workflow: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        """Sync twin of `run_workflow_async`."""
        return run_sync(self.start_workflow_async(workflow, args, kwargs))

    start_workflow = sync_twin(start_workflow_async)
    resume_workflow = sync_twin(resume_workflow_async)

    # ---- checkpoints and time travel (see perdure.durable.checkpoints) -----------------------------

    async def create_checkpoint_async(self, description: str = "", state: Any = None) -> Checkpoint:
        """Journal a manual checkpoint in this running execution (seed Spring `createCheckpoint`)."""
        return await create_checkpoint_async(self.execution_id, description=description, state=state)

    create_checkpoint = sync_twin(create_checkpoint_async)

    @_HybridMethod
    async def list_checkpoints_async(self_or_cls: Any, *args: Any, **kwargs: Any) -> list[Checkpoint]:
        """`DurableExecution.list_checkpoints_async(execution_id, storage)`, or on an instance."""
        execution_id, storage = _target(self_or_cls, args, "list_checkpoints")
        return await list_checkpoints_async(execution_id, storage, **kwargs)

    @_HybridMethod
    def list_checkpoints(self_or_cls: Any, *args: Any, **kwargs: Any) -> list[Checkpoint]:
        """The execution's checkpoints in journal order: every journaled unit, and manual ones.

        Call as `DurableExecution.list_checkpoints(execution_id, storage)` or `durable.list_checkpoints()`;
        `include_superseded=True` adds the entries a rewind superseded.
        """
        execution_id, storage = _target(self_or_cls, args, "list_checkpoints")
        return run_sync(list_checkpoints_async(execution_id, storage, **kwargs))

    @_HybridMethod
    def get_checkpoint(self_or_cls: Any, checkpoint: str, *args: Any) -> Checkpoint:
        """The checkpoint with this id (`DurableExecution.get_checkpoint(id, storage)`, or on an instance)."""
        return run_sync(get_checkpoint_async(checkpoint, _storage(self_or_cls, args, "get_checkpoint")))

    @_HybridMethod
    def get_latest_checkpoint(self_or_cls: Any, *args: Any) -> Checkpoint | None:
        """The latest active checkpoint (`DurableExecution.get_latest_checkpoint(execution_id, storage)`)."""
        execution_id, storage = _target(self_or_cls, args, "get_latest_checkpoint")
        return run_sync(get_latest_checkpoint_async(execution_id, storage))

    @_HybridMethod
    def delete_checkpoint(self_or_cls: Any, checkpoint: str, *args: Any) -> bool:
        """Hide a manual checkpoint (`DurableExecution.delete_checkpoint(id, storage)`); journal kept."""
        return run_sync(delete_checkpoint_async(checkpoint, _storage(self_or_cls, args, "delete_checkpoint")))

    @staticmethod
    async def fork_async(execution_id: str, storage: DurableExecutionStorage, **options: Any) -> str:
        """Async twin of `fork`."""
        return await fork_async(execution_id, storage, **options)

    @staticmethod
    def fork(
        execution_id: str,
        storage: DurableExecutionStorage,
        *,
        at_step: int | None = None,
        at_checkpoint: str | None = None,
        new_execution_id: str | None = None,
    ) -> str:
        """A new execution whose journal is this one's up to `at_step` / `at_checkpoint`; its id.

        Resume it like any execution (`resume_agent`, `resume_workflow`, a worker): the prefix replays
        and the rest runs live, with the same or another agent, model or prompt.
        """
        return run_sync(
            fork_async(
                execution_id,
                storage,
                at_step=at_step,
                at_checkpoint=at_checkpoint,
                new_execution_id=new_execution_id,
            )
        )

    @staticmethod
    async def rewind_async(execution_id: str, storage: DurableExecutionStorage, **options: Any) -> int:
        """Async twin of `rewind`."""
        return await rewind_async(execution_id, storage, **options)

    @staticmethod
    def rewind(
        execution_id: str,
        storage: DurableExecutionStorage,
        *,
        to_step: int | None = None,
        to_node: str | None = None,
    ) -> int:
        """Continue the same execution from `to_step` (or before the latest unit named `to_node`).

        The entries after that point are kept as superseded history; the next resume runs live from
        there (Spring `recoverFromCheckpoint` / `recoverToSpecificNode`). Returns the step kept.
        """
        return run_sync(rewind_async(execution_id, storage, to_step=to_step, to_node=to_node))

    # ---- resume tokens ----------------------------------------------------------------------------

    @staticmethod
    def resume_token(
        execution_id: str,
        at: str | None = None,
        *,
        expires_in: float = 7 * 24 * 3600,
        key: str | bytes | None = None,
    ) -> str:
        """A signed (HMAC-SHA256, `PERDURE_SECRET_KEY` or `key`), expiring, URL-safe token for this execution.

        `at` names a checkpoint (`<execution_id>@<step>`) the token refers to. Hand it to another
        service; `from_resume_token(token, storage)` there returns the execution to resume.
        """
        from .._tokens import create_resume_token

        if at is not None and parse_checkpoint_id(at)[0] != execution_id:
            raise UserError(f"Checkpoint {at!r} does not belong to execution {execution_id!r}.")
        return create_resume_token(execution_id, checkpoint=at, expires_in=expires_in, key=key)

    @classmethod
    def from_resume_token(
        cls, token: str, storage: DurableExecutionStorage, *, key: str | bytes | None = None, **options: Any
    ) -> DurableExecution:
        """The execution a valid token names, ready to resume (`resume_agent` / `resume_workflow`).

        A tampered, expired or foreign-key token raises `InvalidResumeTokenError`; a token whose
        execution or checkpoint no longer exists raises `ExecutionNotFoundError` /
        `CheckpointNotFoundError`. Nothing runs here. `options` go to the constructor (auto_cleanup, ...).
        """
        from .._tokens import verify_resume_token

        claims = verify_resume_token(token, key=key)
        head = storage.load_state(claims.execution_id)
        if head is None:
            raise storage.not_found_error(claims.execution_id)
        if claims.checkpoint is not None:
            run_sync(get_checkpoint_async(claims.checkpoint, storage))
        return cls(storage, execution_id=claims.execution_id, **options)

    # ---- recovery ---------------------------------------------------------------------------------

    @staticmethod
    async def recover_interrupted_async(
        storage: DurableExecutionStorage, agent_resolver: Any, **options: Any
    ) -> Any:
        """Resume every interrupted execution whose lease expired; see `perdure.durable.recovery`."""
        return await recover_interrupted_async(storage, agent_resolver, **options)

    @staticmethod
    def recover_interrupted(storage: DurableExecutionStorage, agent_resolver: Any, **options: Any) -> Any:
        """Sync twin of `recover_interrupted_async`."""
        return run_sync(DurableExecution.recover_interrupted_async(storage, agent_resolver, **options))


async def _info_async(target: Any, *args: Any) -> dict[str, Any] | None:
    if isinstance(target, DurableExecution) and target.engine_name != "embedded" and len(args) < 2:
        return await target.engine.describe(args[0] if args else target.execution_id)
    if isinstance(target, DurableExecution):
        execution_id = args[0] if args else target.execution_id
        storage = args[1] if len(args) > 1 else target.storage
    else:
        if len(args) != 2:
            raise UserError("Call DurableExecution.get_execution_info(execution_id, storage).")
        execution_id, storage = args
    head = await storage.load_state_async(execution_id)
    return None if head is None else head.info()


def _target(target: Any, args: tuple[Any, ...], name: str) -> tuple[str, DurableExecutionStorage]:
    """`(execution_id, storage)` from an instance, or from `(execution_id, storage)` on the class."""
    if isinstance(target, DurableExecution):
        return (args[0] if args else target.execution_id), (args[1] if len(args) > 1 else target.storage)
    if len(args) != 2:
        raise UserError(f"Call DurableExecution.{name}(execution_id, storage).")
    return args[0], args[1]


def _cancel_target(
    target: Any, args: tuple[Any, ...], options: dict[str, Any]
) -> tuple[str, DurableExecutionStorage, str]:
    """`(execution_id, storage, reason)` of `cancel`: instance `(reason?)`, class `(id, storage, reason?)`."""
    reason = options.pop("reason", None)
    if isinstance(target, DurableExecution) and len(args) <= 1:
        execution_id, storage, rest = target.execution_id, target.storage, args
    elif len(args) in (2, 3):
        execution_id, storage, rest = args[0], args[1], args[2:]
    else:
        raise UserError("Call DurableExecution.cancel(execution_id, storage, reason='').")
    if rest:
        reason = rest[0]
    return execution_id, storage, reason or ""


def _storage(target: Any, args: tuple[Any, ...], name: str) -> DurableExecutionStorage:
    """The storage of an instance, or the one passed to the class method."""
    if isinstance(target, DurableExecution) and not args:
        return target.storage
    if len(args) != 1:
        raise UserError(f"Call DurableExecution.{name}(checkpoint_id, storage).")
    storage: DurableExecutionStorage = args[0]
    return storage
