"""`DurableAgent`: the seed guide's facade over a durable pydantic-ai agent and its checkpoints.

`DurableAgent('openai:gpt-4o', backend=storage, checkpoint_every_n_steps=1)` is the spelling the
seed documents; underneath it is a pydantic-ai `Agent` with `PerdureDurability`, run as one
execution (`workflow_id`) of `DurableExecution`. Every journaled unit is a checkpoint; manual
ones carry a state. Inside a workflow a `DurableAgent.run` is a nested agent run of that workflow
(journaled at its position), so the seed's `StatefulWorkflow` of several agents is one execution.

`checkpoint_every_n_steps`:
- `1` (default): every unit is journaled as it finishes;
- `N > 1`: units are journaled N at a time in one storage write (fewer commits; a crash may run
  up to N - 1 finished units again);
- `0`: automatic checkpoints off: the run is not journaled (not durable); manual checkpoints
  (`create_checkpoint`) are stored, in an execution that only holds them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydantic_ai import Agent as PydanticAgent

from .._sync import run_sync as _run_sync
from ..errors import ExecutionCompletedError, StorageNotFoundError, UserError
from ..records import ExecutionStatus, StepRecord, TaskSnapshot, new_execution_id
from ..storage.base import DurableExecutionStorage
from ..storage.url import storage_from_url
from ._outside import outside_execution_ok
from .capability import PerdureDurability
from .checkpoints import (
    Checkpoint,
    checkpoint_id,
    create_checkpoint_async,
    fork_async,
    get_checkpoint_async,
    list_checkpoints_async,
    rewind_async,
    save_checkpoint_async,
)
from .execution import DurableExecution
from .journal import current_run

__all__ = ["DurableAgent"]

logger = logging.getLogger("perdure")

_AGENTS: dict[str, PydanticAgent[Any, Any]] = {}
"""Agents of the `DurableAgent`s this program made, by name (what `from_checkpoint` resumes with)."""


class DurableAgent:
    """A pydantic-ai agent whose runs are durable executions, with the seed's checkpoint methods.

    Args:
        model_or_agent: A model (`"openai:gpt-4o"`, a `Model`) or a pydantic-ai `Agent` that has
            `PerdureDurability` among its capabilities.
        backend: A storage or a storage URL (`sqlite:///runs.db`); in-memory when omitted.
        workflow_id: The execution id of the agent's runs (default: a new one). A run on an id that
            exists and did not complete resumes it.
        checkpoint_every_n_steps: 1 journals every unit, N > 1 journals N units per write, 0 turns
            journaling off (manual checkpoints only). See the module docstring.
        checkpoint_on_error: Store a manual checkpoint (the error, in its state) when a run fails.
        on_checkpoint: Called with each new `Checkpoint` (journaled units and manual ones).
        on_resume: Called with the latest `Checkpoint` when a run resumes an existing execution.
        name: The agent's name (units are named after it); default `durable-agent`.
        **agent_options: Passed to pydantic-ai's `Agent` when `model_or_agent` is a model.

    """

    def __init__(
        self,
        model_or_agent: Any,
        *,
        backend: DurableExecutionStorage | str | None = None,
        workflow_id: str | None = None,
        checkpoint_every_n_steps: int = 1,
        checkpoint_on_error: bool = True,
        on_checkpoint: Callable[[Checkpoint], Any] | None = None,
        on_resume: Callable[[Checkpoint], Any] | None = None,
        name: str | None = None,
        **agent_options: Any,
    ) -> None:
        if checkpoint_every_n_steps < 0:
            raise UserError(f"checkpoint_every_n_steps must be >= 0, got {checkpoint_every_n_steps}.")
        if isinstance(model_or_agent, PydanticAgent):
            if PerdureDurability.from_agent(model_or_agent) is None:
                raise UserError(
                    f"Agent {model_or_agent.name!r} is not durable: create it with "
                    f"capabilities=[PerdureDurability()], or pass the model to DurableAgent."
                )
            self.agent: PydanticAgent[Any, Any] = model_or_agent
        else:
            self.agent = PydanticAgent(
                model_or_agent,
                name=name or "durable-agent",
                capabilities=[PerdureDurability()],
                **agent_options,
            )
        if self.agent.name:
            _AGENTS[self.agent.name] = self.agent
        self.backend: DurableExecutionStorage = (
            storage_from_url(backend) if isinstance(backend, str) else backend or _memory()
        )
        self.workflow_id = workflow_id or new_execution_id()
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self.checkpoint_on_error = checkpoint_on_error
        self.on_checkpoint = on_checkpoint
        self.on_resume = on_resume
        self.checkpoint_count = 0
        """Checkpoints this object created (journaled units and manual ones)."""

    def __repr__(self) -> str:
        return f"DurableAgent({self.agent.name!r}, workflow_id={self.workflow_id!r})"

    # ---- running ------------------------------------------------------------------------------------

    async def run(self, prompt: str, **run_kwargs: Any) -> Any:
        """Run (or resume) the agent as execution `workflow_id`; pydantic-ai's `AgentRunResult`.

        Inside a workflow this is a nested agent run of the workflow. After the execution completed,
        another `run` starts a new execution and `workflow_id` moves to it.
        """
        if current_run() is not None:  # a nested run (a workflow, a tool): journaled where it runs
            return await self.agent.run(prompt, **run_kwargs)
        if self.checkpoint_every_n_steps == 0:  # not journaled: manual checkpoints only
            with outside_execution_ok():  # deliberate: no warning that nothing is saved
                return await self.agent.run(prompt, **run_kwargs)
        head = await self._head()
        if head is not None and head.status is ExecutionStatus.COMPLETED:
            self.workflow_id = new_execution_id()
            head = None
        if head is not None and self.on_resume is not None:
            points = await list_checkpoints_async(self.workflow_id, self.backend)
            if points:
                self.on_resume(points[-1])
        durable = DurableExecution(self.backend, execution_id=self.workflow_id, auto_cleanup=False)
        durable.batch_size = self.checkpoint_every_n_steps
        try:
            attempt = await durable.run_agent_async(
                self.agent,
                prompt,
                task=TaskSnapshot(description=prompt, agent_name=self.agent.name),
                on_unit=self._on_unit,
                **run_kwargs,
            )
        except ExecutionCompletedError:
            raise
        except Exception as exc:
            if self.checkpoint_on_error and await self._exists():
                await self._error_checkpoint(exc)
            raise
        return attempt.result

    def run_sync(self, prompt: str, **run_kwargs: Any) -> Any:
        """Sync twin of `run` (also inside a running event loop)."""
        return _run_sync(self.run(prompt, **run_kwargs))

    async def run_from_checkpoint(self, checkpoint: str, **run_kwargs: Any) -> Any:
        """Go back to `checkpoint` (a rewind: what came after it is kept as history) and run from there."""
        point = await get_checkpoint_async(checkpoint, self.backend)
        if point.execution_id != self.workflow_id:
            self.workflow_id = point.execution_id
        await rewind_async(point.execution_id, self.backend, to_step=point.step_index)
        head = await self.backend.load_state_async(point.execution_id)
        prompt = head.task.description if head is not None else ""
        return await self.run(prompt, **run_kwargs)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Checkpoint,
        *,
        backend: DurableExecutionStorage | str,
        agent: PydanticAgent[Any, Any] | None = None,
        **options: Any,
    ) -> DurableAgent:
        """A `DurableAgent` on a fork of the checkpoint's execution, cut at the checkpoint.

        Its next `run(prompt)` replays the journal up to the checkpoint and continues live (a fork
        may continue with another prompt). The agent is `agent`, else the one a `DurableAgent` of
        this program registered under the execution's recorded agent name.
        """
        storage = storage_from_url(backend) if isinstance(backend, str) else backend
        head = storage.load_state(checkpoint.execution_id)
        if head is None:
            raise storage.not_found_error(checkpoint.execution_id)
        chosen = agent or _AGENTS.get(head.task.agent_name or "")
        if chosen is None:
            raise UserError(
                f"No agent to continue execution {checkpoint.execution_id!r} with: pass agent=..., or "
                f"create a DurableAgent for agent {head.task.agent_name!r} first."
            )
        fork_id = _run_sync(fork_async(checkpoint.execution_id, storage, at_step=checkpoint.step_index))
        return cls(chosen, backend=storage, workflow_id=fork_id, **options)

    # ---- checkpoints ----------------------------------------------------------------------------------

    async def create_checkpoint(self, state: Any = None, description: str = "") -> str:
        """Store a manual checkpoint with `state`; its id. Inside a run it is journaled in the run."""
        if current_run() is not None:
            point = await create_checkpoint_async(description=description, state=state)
        else:
            await self._ensure_holder()
            point = await save_checkpoint_async(
                self.workflow_id, self.backend, description=description, state=state
            )
        self._count(point)
        return point.id

    async def get_checkpoint(self, checkpoint: str) -> Checkpoint:
        """The checkpoint with this id."""
        return await get_checkpoint_async(checkpoint, self.backend)

    async def list_checkpoints(self) -> list[Checkpoint]:
        """The checkpoints of execution `workflow_id` in journal order ([] before the first run)."""
        if not await self._exists():
            return []
        return await list_checkpoints_async(self.workflow_id, self.backend)

    # ---- internals ------------------------------------------------------------------------------------

    async def _head(self) -> Any:
        try:
            return await self.backend.load_state_async(self.workflow_id)
        except StorageNotFoundError:  # a storage that does not exist yet holds nothing
            return None

    async def _exists(self) -> bool:
        return await self._head() is not None

    async def _ensure_holder(self) -> None:
        """Before any run, manual checkpoints need an execution: one that only holds them."""
        if await self._exists():
            return
        if self.checkpoint_every_n_steps != 0:
            raise UserError(
                f"DurableAgent {self.agent.name!r} has no execution yet: run it first, or create the "
                f"checkpoint inside the run (checkpoint_every_n_steps=0 keeps checkpoints without runs)."
            )
        await self.backend.save_state_async(_holder_head(self.workflow_id, self.agent.name))

    def _on_unit(self, step: StepRecord, replayed: bool) -> None:
        if replayed:
            return
        self._count(
            Checkpoint(
                id=checkpoint_id(step.execution_id, step.seq),
                execution_id=step.execution_id,
                step_index=step.seq,
                step_name=step.name,
                kind=step.kind.value,
                created_at=step.finished_at,
            )
        )

    def _count(self, point: Checkpoint) -> None:
        self.checkpoint_count += 1
        if self.on_checkpoint is not None:
            try:
                self.on_checkpoint(point)
            except Exception:  # an observer never breaks a run
                logger.exception("[%s] on_checkpoint callback failed", point.execution_id)

    async def _error_checkpoint(self, exc: BaseException) -> None:
        try:
            point = await save_checkpoint_async(
                self.workflow_id,
                self.backend,
                description="run failed",
                state={"error_type": type(exc).__name__, "error": str(exc)[:2000]},
            )
            self._count(point)
        except Exception:  # the run's error matters more than its checkpoint
            logger.warning("[%s] could not store the error checkpoint", self.workflow_id, exc_info=True)


def _memory() -> DurableExecutionStorage:
    from ..storage.memory import InMemoryDurableStorage

    return InMemoryDurableStorage()


def _holder_head(execution_id: str, agent_name: str | None) -> Any:
    from ..records import ExecutionRecord

    # Completed from the start: nothing of it runs or is recovered; it only holds manual checkpoints.
    return ExecutionRecord(
        execution_id=execution_id,
        status=ExecutionStatus.COMPLETED,
        task=TaskSnapshot(description=f"manual checkpoints of {agent_name}", agent_name=agent_name),
    )
