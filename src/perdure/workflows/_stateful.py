"""`StatefulWorkflow`: the seed guide's class-based workflow with a typed, checkpointed `context`.

A subclass sets `self.context` (a pydantic model) and writes an async `run(...)`. `save_state()`
stores the context as a manual checkpoint; `resume_from_checkpoint(workflow_id, backend)` returns an
instance holding the latest saved context. `start(...)` runs `run` as a durable workflow (the class
is registered as one when it is defined), so the `DurableAgent`s and steps inside it are journaled
in the one execution `workflow_id`, and a resume in another process continues where it stopped.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, ClassVar, Self

from pydantic import BaseModel

from ..durable.checkpoints import (
    Checkpoint,
    create_checkpoint_async,
    list_checkpoints_async,
    save_checkpoint_async,
)
from ..durable.execution import DurableExecution
from ..durable.journal import current_run
from ..errors import CheckpointNotFoundError, StorageNotFoundError, UserError
from ..records import ExecutionRecord, ExecutionStatus, TaskSnapshot, new_execution_id
from ..storage.base import DurableExecutionStorage
from ..storage.url import storage_from_url
from ._define import Workflow, workflow

__all__ = ["StatefulWorkflow"]


class StatefulWorkflow:
    """A workflow class with a typed `context` that survives crashes (seed `StatefulWorkflow`).

    Args:
        backend: A storage or storage URL; in-memory when omitted.
        workflow_id: The execution id (default: a new one).

    """

    context: BaseModel
    _workflow: ClassVar[Workflow[Any, Any]]

    def __init__(self, backend: DurableExecutionStorage | str | None = None, workflow_id: str | None = None):
        if isinstance(backend, str):
            backend = storage_from_url(backend)
        if backend is None:
            from ..storage.memory import InMemoryDurableStorage

            backend = InMemoryDurableStorage()
        self.backend: DurableExecutionStorage = backend
        self.workflow_id = workflow_id or new_execution_id()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is None:
            return
        if not inspect.iscoroutinefunction(run):
            raise UserError(f"{cls.__qualname__}.run must be an async method.")

        async def entry(*args: Any, **kwargs: Any) -> Any:
            attempt = current_run()
            assert attempt is not None  # the workflow engine runs this
            instance = cls(attempt.storage)
            instance.workflow_id = attempt.execution_id
            return await instance.run(*args, **kwargs)

        functools.update_wrapper(entry, run)
        signature = inspect.signature(run)
        entry.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=list(signature.parameters.values())[1:]
        )
        entry.__annotations__ = {k: v for k, v in run.__annotations__.items() if k != "self"}
        cls._workflow = workflow(name=f"{cls.__module__}:{cls.__qualname__}")(entry)

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        """The workflow's body; subclasses implement it."""
        raise NotImplementedError

    async def start(self, *args: Any, **kwargs: Any) -> Any:
        """Run `run(...)` durably as execution `workflow_id` (resuming it if it exists); its output."""
        durable = DurableExecution(self.backend, execution_id=self.workflow_id, auto_cleanup=False)
        return await durable.run_workflow_async(type(self)._workflow, *args, **kwargs)

    async def resume(self) -> Any:
        """Resume execution `workflow_id` from its journal (in any process); its output."""
        durable = DurableExecution(self.backend, execution_id=self.workflow_id, auto_cleanup=False)
        return await durable.resume_workflow_async(type(self)._workflow)

    async def save_state(self) -> Checkpoint:
        """Store `self.context` as a manual checkpoint (journaled in the run when called inside it)."""
        state = self.context.model_dump(mode="json")
        description = f"{type(self).__name__} state"
        run = current_run()
        if run is not None and run.execution_id == self.workflow_id:
            return await create_checkpoint_async(description=description, state=state)
        if await self._head() is None:  # outside any run: an execution that only holds the states
            await self.backend.save_state_async(
                ExecutionRecord(
                    execution_id=self.workflow_id,
                    status=ExecutionStatus.COMPLETED,
                    task=TaskSnapshot(description=f"saved states of {type(self).__qualname__}"),
                )
            )
        return await save_checkpoint_async(
            self.workflow_id, self.backend, description=description, state=state
        )

    @classmethod
    async def resume_from_checkpoint(cls, workflow_id: str, backend: DurableExecutionStorage | str) -> Self:
        """An instance for `workflow_id` whose `context` is the latest saved one."""
        instance = cls(backend)
        instance.workflow_id = workflow_id
        points = [
            p
            for p in await list_checkpoints_async(workflow_id, instance.backend)
            if p.kind == "manual" and isinstance(p.state, dict)
        ]
        if not points:
            raise CheckpointNotFoundError(
                workflow_id, "state", hint="No state was saved (call save_state() in the workflow)."
            )
        instance.context = type(instance.context).model_validate(points[-1].state)
        return instance

    async def _head(self) -> Any:
        try:
            return await self.backend.load_state_async(self.workflow_id)
        except StorageNotFoundError:
            return None
