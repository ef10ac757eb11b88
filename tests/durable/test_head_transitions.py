"""Status changes of the head are methods of `ExecutionRecord`; errors live in `perdure.errors`."""

from __future__ import annotations

import pickle
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

import perdure.durable
import perdure.durable.identity
import perdure.durable.journal
import perdure.durable.recovery
from perdure import errors
from perdure.durable import SQLiteDurableStorage
from perdure.records import (
    SCHEMA_VERSION,
    ExecutionIdentity,
    ExecutionRecord,
    ExecutionStatus,
    PendingCall,
    PendingDecision,
    ReplayStats,
    StepKind,
    StepRecord,
    UsageTotals,
)

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


def _head(**fields: object) -> ExecutionRecord:
    base: dict[str, object] = {"execution_id": "h-1", "updated_at": EPOCH, "next_seq": 3, "step_index": 2}
    return ExecutionRecord.model_validate(base | fields)


def _step(seq: int, kind: StepKind = StepKind.TOOL_CALL) -> StepRecord:
    return StepRecord(
        execution_id="h-1", seq=seq, kind=kind, name="tool:pay", key=f"k{seq}", finished_at=EPOCH
    )


def test_each_transition_returns_a_new_head_and_leaves_the_old_one() -> None:
    pending = PendingDecision(kind="approval", calls=[PendingCall(tool_call_id="c", tool_name="pay")])
    head = _head(status=ExecutionStatus.PAUSED, pending=pending, error=None)
    before = head.model_dump()

    failed = head.failed(RuntimeError("boom"), 5, "tool:pay")
    assert (failed.status, failed.step_index, failed.step_name) == (ExecutionStatus.FAILED, 5, "tool:pay")
    assert failed.error is not None and failed.error.message == "boom" and failed.updated_at > EPOCH
    kept = head.failed(RuntimeError("gave up"))  # recovery: the step shown is kept
    assert (kept.status, kept.step_index, kept.step_name) == (ExecutionStatus.FAILED, 2, "")

    paused = _head().paused(pending, ValueError("why"))
    assert paused.status is ExecutionStatus.PAUSED and paused.pending == pending
    assert paused.error is not None and paused.error.type == "ValueError"
    assert _head().paused(pending).error is None

    cancelled = head.cancelled(RuntimeError("aborted"))
    assert cancelled.status is ExecutionStatus.CANCELLED and cancelled.pending is None
    assert cancelled.error is not None and cancelled.error.message == "aborted"

    completed = head.completed({"answer": 42})
    assert completed.status is ExecutionStatus.COMPLETED and completed.output == {"answer": 42}
    assert completed.error is None and completed.pending is None

    usage, replay = UsageTotals(requests=2), ReplayStats(executed_tool_calls=1)
    advanced = failed.advanced(_step(3), usage, replay)
    assert (advanced.status, advanced.step_index, advanced.step_name) == (
        ExecutionStatus.SUCCESS,
        3,
        "tool:pay",
    )
    assert advanced.next_seq == 4 and advanced.error is None and advanced.updated_at == EPOCH
    assert advanced.usage == usage and advanced.replay == replay

    noted = head.noted(_step(3, StepKind.STARTED))
    assert noted.next_seq == 4 and noted.status is ExecutionStatus.PAUSED and noted.step_index == 2
    decided = head.decided(_step(3, StepKind.DECISION))
    assert decided.next_seq == 4 and decided.status is ExecutionStatus.SUCCESS and decided.pending is None

    identity = ExecutionIdentity(agent_name="a")
    first = _head(attempts=0, replay=ReplayStats(resumes=0, replayed_tool_calls=3)).attempt_started(identity)
    assert first.attempts == 1 and first.replay == ReplayStats() and first.identity == identity
    again = first.attempt_started(identity)
    assert again.attempts == 2 and again.replay.resumes == 1

    assert head.model_dump() == before


def test_errors_defined_in_errors_module_stay_importable_from_their_old_homes() -> None:
    assert perdure.durable.journal.ExecutionAborted is errors.ExecutionAborted
    assert perdure.durable.ExecutionAborted is errors.ExecutionAborted
    assert perdure.durable.recovery.RecoveryGaveUpError is errors.RecoveryGaveUpError
    assert perdure.durable.identity.IdentityError is errors.IdentityError
    for err in (
        errors.ExecutionAborted("e-1", "pay", "c1"),
        errors.RecoveryGaveUpError("e-1", 5),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and back.execution_id == "e-1"


def test_database_level_schema_versions_name_the_database_not_an_execution(tmp_path: Path) -> None:
    err = errors.IncompatibleSchemaError(
        None, 7, 1, where="SQLite database x.db", hint=", or use another file"
    )
    assert err.execution_id is None and err.where == "SQLite database x.db"
    assert str(err).startswith("SQLite database x.db has schema version 7") and "another file" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert back.where == err.where and str(back) == str(err)
    record = errors.IncompatibleSchemaError("e-1", 7, 1)
    assert record.execution_id == "e-1" and record.where == "" and "'e-1'" in str(record)

    created = SQLiteDurableStorage(tmp_path / "t.db")
    created.save_state(_head())
    created.close()
    with sqlite3.connect(tmp_path / "t.db") as raw:
        raw.execute(
            "UPDATE durable_executions_meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,)
        )
    newer = SQLiteDurableStorage(tmp_path / "t.db")
    try:
        with pytest.raises(errors.IncompatibleSchemaError) as info:
            newer.load_state("h-1")
    finally:
        newer.close()
    assert info.value.execution_id is None and str(tmp_path / "t.db") in info.value.where
    assert "durable_executions_meta" in str(info.value)
