"""`DurableExecution`: the seed API's handle on one execution and on a storage's executions.

It runs any pydantic-ai agent that carries `PerdureDurability` as a journaled execution
(`run_agent_async` / `resume_agent_async`, from `ExecutionHandle`), and answers the management
questions of the seed API: `get_execution_info`, `list_all_executions`, deletion and recovery.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

from .._sync import run_sync, sync_twin
from ..errors import UserError
from ..records import ExecutionStatus, StepRecord
from ..storage.base import DurableExecutionStorage
from .engine import AttemptResult, ExecutionHandle
from .recovery import recover_interrupted_async

__all__ = ["AttemptResult", "DurableExecution"]

_F = TypeVar("_F", bound=Callable[..., Any])
R = TypeVar("R")


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
    """

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
        storage: DurableExecutionStorage,
        status: ExecutionStatus | str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Info dicts of the storage's executions, most recently updated first."""
        return [head.info() for head in storage.list_executions(status, limit)]

    @staticmethod
    async def list_all_executions_async(
        storage: DurableExecutionStorage,
        status: ExecutionStatus | str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Async twin of `list_all_executions`."""
        return [head.info() for head in await storage.list_executions_async(status, limit)]

    def delete(self, *, force: bool = False) -> bool:
        """Delete this execution's records (a running one only with `force`; see `delete_state_async`)."""
        return self.storage.delete_state(self.execution_id, force=force)

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
    if isinstance(target, DurableExecution):
        execution_id = args[0] if args else target.execution_id
        storage = args[1] if len(args) > 1 else target.storage
    else:
        if len(args) != 2:
            raise UserError("Call DurableExecution.get_execution_info(execution_id, storage).")
        execution_id, storage = args
    head = await storage.load_state_async(execution_id)
    return None if head is None else head.info()
