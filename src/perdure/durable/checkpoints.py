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
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from ..codec import json_data
from ..errors import CheckpointNotFoundError, UserError
from ..records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord, UsageTotals, utcnow
from ..records import new_execution_id as _new_id
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

_POINT_KINDS = frozenset(
    {StepKind.MODEL_REQUEST, StepKind.TOOL_CALL, StepKind.OTHER, StepKind.STEP, StepKind.CHECKPOINT}
)
"""Journal entries that are checkpoints (bookkeeping entries are not)."""


class Checkpoint(BaseModel):
    """A point of an execution's journal (seed Spring `Checkpoint`)."""

    id: str = ""
    """`<execution_id>@<step>`; empty on a checkpoint built by hand and not saved yet."""
    execution_id: str = ""
    step_index: int = -1
    step_name: str = "checkpoint"
    kind: str = "manual"
    """`manual` (made by `create_checkpoint`) or the unit's kind (`model_request`, `tool_call`, ...)."""
    created_at: datetime = Field(default_factory=utcnow)
    status: str = "active"
    """`active`, or `superseded` once a rewind went back before it."""
    description: str | None = None
    state: Any = None
    # The seed's `Checkpoint(agent_state=..., message_history=..., tool_results=..., metadata=...,
    # step_number=...)` spelling, stored with a manual checkpoint (`storage.save_checkpoint`).
    message_history: list[Any] = Field(default_factory=list)
    tool_results: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    step_number: int | None = None

    def __init__(self, **data: Any) -> None:
        if "agent_state" in data:  # the seed's name for the state payload
            data.setdefault("state", data.pop("agent_state"))
        super().__init__(**data)

    @property
    def agent_state(self) -> Any:
        """The seed's name for `state`."""
        return self.state

    def create_resume_token(
        self, *, expires_in: float = 7 * 24 * 3600, key: str | bytes | None = None
    ) -> str:
        """A signed, expiring token that resumes this execution from any process (`from_resume_token`)."""
        from .._tokens import create_resume_token

        return create_resume_token(self.execution_id, checkpoint=self.id, expires_in=expires_in, key=key)


def checkpoint_id(execution_id: str, seq: int) -> str:
    """`<execution_id>@<seq>`."""
    return f"{execution_id}@{seq}"


def parse_checkpoint_id(checkpoint: str) -> tuple[str, int]:
    """The execution id and journal position of a checkpoint id."""
    execution_id, sep, seq = checkpoint.rpartition("@")
    if not sep or not execution_id or not seq.isdigit():
        raise UserError(f"{checkpoint!r} is not a checkpoint id (expected '<execution_id>@<step>').")
    return execution_id, int(seq)


def effective_journal(journal: list[StepRecord]) -> list[StepRecord]:
    """The journal as replay sees it: without the entries rewinds superseded, nor the rewinds."""
    hidden: list[tuple[int, int]] = []
    for step in journal:
        if step.kind is StepKind.REWIND and isinstance(step.result, dict):
            hidden.append((int(step.result.get("to_step", -1)), step.seq))
    if not hidden:
        return journal
    return [
        s
        for s in journal
        if s.kind is not StepKind.REWIND and not any(low < s.seq < high for low, high in hidden)
    ]


def _point(step: StepRecord, superseded: bool) -> Checkpoint:
    manual = step.kind is StepKind.CHECKPOINT
    result = step.result if isinstance(step.result, dict) else {}
    return Checkpoint(
        id=checkpoint_id(step.execution_id, step.seq),
        execution_id=step.execution_id,
        step_index=step.seq,
        step_name=step.name,
        kind="manual" if manual else step.kind.value,
        created_at=step.finished_at,
        status="superseded" if superseded else "active",
        description=result.get("description") if manual else None,
        state=result.get("state") if manual else None,
        message_history=result.get("message_history", []) if manual else [],
        tool_results=result.get("tool_results", {}) if manual else {},
        metadata=result.get("metadata", {}) if manual else {},
        step_number=result.get("step_number") if manual else None,
    )


async def _load(
    execution_id: str, storage: DurableExecutionStorage
) -> tuple[ExecutionRecord, list[StepRecord]]:
    head = await storage.load_state_async(execution_id)
    if head is None:
        raise storage.not_found_error(execution_id)
    return head, await storage.load_steps_async(execution_id)


async def list_checkpoints_async(
    execution_id: str,
    storage: DurableExecutionStorage,
    *,
    include_superseded: bool = False,
    include_deleted: bool = False,
) -> list[Checkpoint]:
    """The execution's checkpoints in journal order (superseded and deleted ones only when asked for)."""
    head, journal = await _load(execution_id, storage)
    active = {s.seq for s in effective_journal(journal)}
    deleted = set() if include_deleted else set(head.deleted_checkpoints)
    points = []
    for step in journal:
        if step.kind not in _POINT_KINDS or checkpoint_id(execution_id, step.seq) in deleted:
            continue
        superseded = step.seq not in active
        if superseded and not include_superseded:
            continue
        points.append(_point(step, superseded))
    return points


async def get_checkpoint_async(
    checkpoint: str, storage: DurableExecutionStorage, *, include_deleted: bool = False
) -> Checkpoint:
    """The checkpoint with this id; `CheckpointNotFoundError` when there is none (or it was deleted)."""
    execution_id, seq = parse_checkpoint_id(checkpoint)
    points = await list_checkpoints_async(
        execution_id, storage, include_superseded=True, include_deleted=include_deleted
    )
    for point in points:
        if point.step_index == seq:
            return point
    raise CheckpointNotFoundError(execution_id, checkpoint)


async def get_latest_checkpoint_async(
    execution_id: str, storage: DurableExecutionStorage
) -> Checkpoint | None:
    """The execution's latest active checkpoint, None when it has none yet."""
    points = await list_checkpoints_async(execution_id, storage)
    return points[-1] if points else None


async def delete_checkpoint_async(
    checkpoint: str, storage: DurableExecutionStorage, *, worker_id: str | None = None
) -> bool:
    """Hide a manual checkpoint (the journal entry stays); False when it was already deleted.

    Only manual checkpoints can be deleted: the others are the units the execution replays. Takes
    the execution's lease for the head write, so a running execution raises `ExecutionLeasedError`.
    """
    point = await get_checkpoint_async(checkpoint, storage, include_deleted=True)
    if point.kind != "manual":
        raise UserError(
            f"Checkpoint {checkpoint!r} is the journaled {point.kind} {point.step_name!r}, not a manual "
            f"checkpoint; only checkpoints made with create_checkpoint can be deleted."
        )
    owner = worker_id or default_worker_id()
    head = await acquire_lease(storage, point.execution_id, owner, DEFAULT_LEASE_TTL)
    try:
        if checkpoint in head.deleted_checkpoints:
            return False
        updated = head.model_copy(
            update={"deleted_checkpoints": [*head.deleted_checkpoints, checkpoint], "updated_at": utcnow()}
        )
        await storage.save_state_async(updated)
        return True
    finally:
        await storage.release_lease_async(point.execution_id, owner)


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


async def save_checkpoint_async(
    execution_id: str,
    storage: DurableExecutionStorage,
    checkpoint: Checkpoint | None = None,
    *,
    description: str = "",
    state: Any = None,
    worker_id: str | None = None,
) -> Checkpoint:
    """Journal a manual checkpoint into an execution that is not running (the seed's `save_checkpoint`).

    It is keyed `manual#<n>`, a key no unit asks for, so replay never returns it: it is a note in
    the journal (with the seed's `agent_state`, `message_history`, `tool_results`, `metadata`), listed
    with the other checkpoints. Takes the lease: a running execution raises `ExecutionLeasedError`.
    """
    source = checkpoint or Checkpoint(description=description, state=state)
    payload = json_data(
        {
            "description": source.description or description,
            "state": source.state,
            "message_history": source.message_history,
            "tool_results": source.tool_results,
            "metadata": source.metadata,
            "step_number": source.step_number,
        },
        execution_id=execution_id,
        what="checkpoint",
    )
    owner = worker_id or default_worker_id()
    head = await acquire_lease(storage, execution_id, owner, DEFAULT_LEASE_TTL)
    try:
        journal = await storage.load_steps_async(execution_id)
        count = sum(1 for s in journal if s.kind is StepKind.CHECKPOINT and s.key.startswith("manual#"))
        now = utcnow()
        entry = StepRecord(
            execution_id=execution_id,
            seq=head.next_seq,
            kind=StepKind.CHECKPOINT,
            name="checkpoint",
            key=f"manual#{count + 1}",
            result=payload,
            started_at=now,
            finished_at=now,
        )
        await storage.append_step_async(head.noted(entry), entry)
    finally:
        await storage.release_lease_async(execution_id, owner)
    return _point(entry, superseded=False)


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
    head, journal = await _load(execution_id, storage)
    prefix = [s for s in effective_journal(journal) if s.seq <= at]
    if not prefix or prefix[-1].seq != at:
        raise CheckpointNotFoundError(execution_id, checkpoint_id(execution_id, at))
    fork_id = new_execution_id or _new_id()
    last = next((s for s in reversed(prefix) if s.kind in _POINT_KINDS), prefix[-1])
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
            named = [s for s in visible if s.name == to_node and s.kind in _POINT_KINDS]
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
        kept = [s for s in visible if s.seq <= target and s.kind in _POINT_KINDS]
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
