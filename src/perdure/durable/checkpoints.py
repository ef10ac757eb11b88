"""Checkpoints and time travel: points of an execution's journal, forks from them, rewinds to them.

A checkpoint is a point in the journal. Every journaled unit is one (id `<execution_id>@<seq>`);
manual checkpoints (`create_checkpoint` inside a run) add a description and a state payload. The
journal is append-only, so nothing here removes entries:

- `fork` copies the journal prefix up to a step into a new execution (its own id, `parent_id` and
  `forked_at` recorded, identity cleared so the fork may resume with another agent, model or
  prompt); resuming it replays the prefix and runs live from there. The copy costs one storage write
  per entry (measured in the README for a 1,000-step prefix); the parent is not touched.
- `rewind` continues the same execution from a point: it journals a `rewind` entry naming the
  position; every entry after that position and before the rewind is superseded. Replay ignores
  superseded entries (`effective_journal`), listings mark them, nothing is deleted.
- `delete_checkpoint` hides a manual checkpoint (its id is recorded on the head); the entry stays.
"""

from __future__ import annotations

import logging
from typing import Any

from ..codec import json_data
from ..errors import CheckpointNotFoundError, UserError
from ..records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord, UsageTotals, utcnow
from ..records import new_execution_id as _new_id
from ..storage._checkpoints import (
    POINT_KINDS,
    Checkpoint,
    checkpoint_id,
    delete_checkpoint_async,
    effective_journal,
    get_checkpoint_async,
    get_latest_checkpoint_async,
    list_checkpoints_async,
    load_execution,
    parse_checkpoint_id,
    save_checkpoint_async,
)
from ..storage.base import DurableExecutionStorage
from ._keys import rewind_key, workflow_key
from .journal import UnitIdentity, current_run, in_unit_scope, response_tokens
from .leases import DEFAULT_LEASE_TTL, acquire_lease, default_worker_id
from .step_context import STEP

__all__ = [
    "Checkpoint",
    "checkpoint_id",
    "create_checkpoint",
    "create_checkpoint_async",
    "delete_checkpoint_async",
    "effective_journal",
    "fork_async",
    "get_checkpoint_async",
    "get_latest_checkpoint_async",
    "list_checkpoints_async",
    "parse_checkpoint_id",
    "rewind_async",
    "save_checkpoint_async",
]

logger = logging.getLogger("perdure")


async def create_checkpoint(description: str = "", state: Any = None) -> Checkpoint:
    """Journal a manual checkpoint in the execution running here (`perdure.create_checkpoint`)."""
    return await create_checkpoint_async(description=description, state=state)


async def create_checkpoint_async(
    execution_id: str | None = None, *, description: str = "", state: Any = None
) -> Checkpoint:
    """Journal a manual checkpoint in the running execution (seed Spring `createCheckpoint`).

    Inside a workflow's own code it takes the next position (replayed like any unit); inside a tool,
    a step body or an agent run it is keyed by its ordinal among the run's checkpoints. On replay the
    recorded checkpoint is returned and nothing new is written.
    """
    run = current_run()
    if run is None or (execution_id is not None and run.execution_id != execution_id):
        raise UserError(
            "create_checkpoint works inside a running execution (a workflow, a tool or a step of it); "
            "outside one, list the journal's checkpoints with DurableExecution.list_checkpoints(...)."
        )
    stored = json_data(state, execution_id=run.execution_id, what="checkpoint state")
    payload = {"description": description, "state": stored}
    at_workflow_level = run.workflow is not None and not in_unit_scope() and STEP.get(None) is None
    key = workflow_key(run.next_position()) if at_workflow_level else None

    async def body() -> Any:
        return payload

    unit = UnitIdentity(StepKind.CHECKPOINT, "checkpoint", "checkpoint", key=key)
    result = await run.run_unit(unit, body)
    recorded = run.recorded(run.last_key)
    seq = recorded.seq if recorded is not None else run.head.step_index
    return Checkpoint(
        id=checkpoint_id(run.execution_id, seq),
        execution_id=run.execution_id,
        step_index=seq,
        step_name="checkpoint",
        kind="manual",
        created_at=recorded.finished_at if recorded is not None else run.head.updated_at,
        description=result.get("description"),
        state=result.get("state"),
    )


def _usage_of(steps: list[StepRecord]) -> UsageTotals:
    usage = UsageTotals()
    for step in steps:
        if step.kind is StepKind.MODEL_REQUEST:
            tokens_in, tokens_out = response_tokens(step.result)
            usage.requests += 1
            usage.input_tokens += tokens_in
            usage.output_tokens += tokens_out
        elif step.kind is StepKind.TOOL_CALL:
            usage.tool_calls += 1
    return usage


async def fork_async(
    execution_id: str,
    storage: DurableExecutionStorage,
    *,
    at_step: int | None = None,
    at_checkpoint: str | None = None,
    new_execution_id: str | None = None,
    worker_id: str | None = None,
) -> str:
    """A new execution whose journal is this one's up to `at_step` (or the checkpoint); its id.

    Resuming the fork replays that prefix and runs live from there, with the same or another agent,
    model or prompt (a fork records its identity afresh). The parent is only read.
    """
    at = _position(execution_id, at_step, at_checkpoint)
    head, journal = await load_execution(execution_id, storage)
    prefix = [s for s in effective_journal(journal) if s.seq <= at]
    if not prefix or prefix[-1].seq != at:
        raise CheckpointNotFoundError(execution_id, checkpoint_id(execution_id, at))
    fork_id = new_execution_id or _new_id()
    last = next((s for s in reversed(prefix) if s.kind in POINT_KINDS), prefix[-1])
    now = utcnow()
    base = ExecutionRecord(
        execution_id=fork_id,
        task=head.task,
        metadata=head.metadata,
        parent_id=execution_id,
        forked_at=at,
        attempts=1,
        created_at=now,
        updated_at=now,
    )
    await storage.save_state_async(base)
    owner = worker_id or default_worker_id()
    leased = await acquire_lease(storage, fork_id, owner, DEFAULT_LEASE_TTL)
    try:
        current = leased
        for seq, step in enumerate(prefix):
            copy = step.model_copy(update={"execution_id": fork_id, "seq": seq})
            current = current.model_copy(update={"next_seq": seq + 1, "updated_at": utcnow()})
            await storage.append_step_async(current, copy)
        final = current.model_copy(
            update={
                "status": ExecutionStatus.SUCCESS,
                "step_index": prefix.index(last),
                "step_name": last.name,
                "usage": _usage_of(prefix),
                "updated_at": utcnow(),
            }
        )
        await storage.save_state_async(final)
    finally:
        await storage.release_lease_async(fork_id, owner)
    logger.info("[%s] forked from %s at step %d (%d entries)", fork_id, execution_id, at, len(prefix))
    return fork_id


def _position(execution_id: str, at_step: int | None, at_checkpoint: str | None) -> int:
    if (at_step is None) == (at_checkpoint is None):
        raise UserError("Pass exactly one of at_step=N or at_checkpoint='<execution_id>@<step>'.")
    if at_checkpoint is not None:
        owner, seq = parse_checkpoint_id(at_checkpoint)
        if owner != execution_id:
            raise UserError(
                f"Checkpoint {at_checkpoint!r} belongs to execution {owner!r}, not {execution_id!r}."
            )
        return seq
    assert at_step is not None
    if at_step < 0:
        raise UserError(f"at_step must be a journal position >= 0, got {at_step}.")
    return at_step


async def rewind_async(
    execution_id: str,
    storage: DurableExecutionStorage,
    *,
    to_step: int | None = None,
    to_node: str | None = None,
    worker_id: str | None = None,
) -> int:
    """Continue the same execution from an earlier point; the entries after it become superseded history.

    `to_step=N` keeps the journal up to step N (the next resume runs live from N + 1); `to_node=name`
    goes back to just before the latest unit of that name (`tool:fetch`, `step:save`, `model_request`),
    so that unit runs again (Spring `recoverToSpecificNode`). Returns the position kept. Takes the
    lease: a running execution raises `ExecutionLeasedError`. Nothing is deleted.
    """
    if (to_step is None) == (to_node is None):
        raise UserError("Pass exactly one of to_step=N or to_node='name'.")
    owner = worker_id or default_worker_id()
    head = await acquire_lease(storage, execution_id, owner, DEFAULT_LEASE_TTL)
    try:
        journal = await storage.load_steps_async(execution_id)
        visible = effective_journal(journal)
        if to_node is not None:
            named = [s for s in visible if s.name == to_node and s.kind in POINT_KINDS]
            if not named:
                hint = "No active journal entry has that name."
                raise CheckpointNotFoundError(execution_id, f"node {to_node}", hint=hint)
            target = named[-1].seq - 1
        else:
            assert to_step is not None
            if to_step != -1 and to_step not in {s.seq for s in visible}:
                raise CheckpointNotFoundError(execution_id, checkpoint_id(execution_id, to_step))
            target = to_step
        superseded = [s.seq for s in visible if s.seq > target]
        if not superseded:
            return target
        rewinds = sum(1 for s in journal if s.kind is StepKind.REWIND)
        now = utcnow()
        kept = [s for s in visible if s.seq <= target and s.kind in POINT_KINDS]
        entry = StepRecord(
            execution_id=execution_id,
            seq=head.next_seq,
            kind=StepKind.REWIND,
            name="rewind",
            key=rewind_key(rewinds + 1),
            result={"to_step": target, "superseded": superseded, "at": now.isoformat()},
            started_at=now,
            finished_at=now,
        )
        rewound = head.model_copy(
            update={
                "status": ExecutionStatus.SUCCESS,
                "step_index": kept[-1].seq if kept else -1,
                "step_name": kept[-1].name if kept else "",
                "next_seq": head.next_seq + 1,
                "error": None,
                "output": None,
                "pending": None,
                "wake_at": None,
                "updated_at": now,
            }
        )
        await storage.append_step_async(rewound, entry)
        logger.info("[%s] rewound to step %d: %d entries superseded", execution_id, target, len(superseded))
        return target
    finally:
        await storage.release_lease_async(execution_id, owner)
