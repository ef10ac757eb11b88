"""Checkpoints as stored data: the points of an execution's journal, listed, fetched, noted, hidden.

Every journaled unit is a checkpoint (id `<execution_id>@<seq>`); manual ones are `checkpoint`
entries with a description and a state. This module only reads journals and writes notes into
executions that are not running (under their lease), so it sits with the storages: the storage
base class offers the seed's `save_checkpoint` / `load_checkpoint` / ... through it. Creating a
checkpoint inside a run, forks and rewinds are engine operations (`perdure.durable.checkpoints`).
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from ..codec import json_data
from ..errors import CheckpointNotFoundError, UserError
from ..records import ExecutionRecord, StepKind, StepRecord, utcnow

DurableExecutionStorage = Any
"""A `perdure.storage.base.DurableExecutionStorage` (not imported: the base class uses this module)."""

__all__ = [
    "POINT_KINDS",
    "Checkpoint",
    "checkpoint_id",
    "delete_checkpoint_async",
    "effective_journal",
    "get_checkpoint_async",
    "get_latest_checkpoint_async",
    "list_checkpoints_async",
    "load_execution",
    "OPERATOR_LEASE_TTL",
    "operator_id",
    "parse_checkpoint_id",
    "point_of",
    "save_checkpoint_async",
]

OPERATOR_LEASE_TTL = 30.0
"""Seconds an operator action (a note, a rewind, a fork's copy) holds the execution's lease."""


def operator_id() -> str:
    """A lease owner id for one operator action of this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


POINT_KINDS = frozenset(
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


def point_of(step: StepRecord, superseded: bool) -> Checkpoint:
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


async def load_execution(
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
    head, journal = await load_execution(execution_id, storage)
    active = {s.seq for s in effective_journal(journal)}
    deleted = set() if include_deleted else set(head.deleted_checkpoints)
    points = []
    for step in journal:
        if step.kind not in POINT_KINDS or checkpoint_id(execution_id, step.seq) in deleted:
            continue
        superseded = step.seq not in active
        if superseded and not include_superseded:
            continue
        points.append(point_of(step, superseded))
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
    owner = worker_id or operator_id()
    head = await storage.acquire_lease_async(point.execution_id, owner, OPERATOR_LEASE_TTL)
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
    owner = worker_id or operator_id()
    head = await storage.acquire_lease_async(execution_id, owner, OPERATOR_LEASE_TTL)
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
    return point_of(entry, superseded=False)
