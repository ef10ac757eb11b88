"""Query properties: list and stats (also with damaged or newer-schema heads stored), and the sync twins."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from ..codec import encode_head
from ..errors import (
    CorruptRecordError,
    ExecutionLeasedError,
    IncompatibleSchemaError,
)
from ..records import SCHEMA_VERSION, ExecutionRecord, ExecutionStatus
from ..storage.base import DurableExecutionStorage
from ._checks import (
    Subject,
    check,
    expect,
    expect_equal,
    expect_raises,
    expect_raises_sync,
    head,
    ids,
    step,
)

# ---- queries -------------------------------------------------------------------------------------


@check("list.filter_order_limit")
async def _list(s: Subject) -> None:
    """list_executions: most recently updated first, filtered by status (str or enum), limited."""
    storage = s.storage
    base = datetime(2025, 1, 1, tzinfo=UTC)
    statuses = [
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.COMPLETED,
        ExecutionStatus.PAUSED,
    ]
    for i in (2, 0, 3, 1):  # not in time order
        await storage.save_state_async(
            head(f"exec-{i}", status=statuses[i], updated_at=base + timedelta(hours=i))
        )
    expect_equal(
        await ids(storage), ["exec-3", "exec-2", "exec-1", "exec-0"], "list_executions_async() order"
    )
    expect_equal(
        await ids(storage, status="completed"),
        ["exec-2", "exec-0"],
        "list_executions_async(status='completed')",
    )
    expect_equal(
        await ids(storage, status=ExecutionStatus.COMPLETED, limit=1),
        ["exec-2"],
        "list_executions_async(status=COMPLETED, limit=1)",
    )
    expect_equal(await ids(storage, limit=2), ["exec-3", "exec-2"], "list_executions_async(limit=2)")
    expect_equal(
        await ids(storage, status=ExecutionStatus.CANCELLED), [], "list_executions_async(status=CANCELLED)"
    )
    expect_equal(await ids(storage, limit=0), [], "list_executions_async(limit=0)")
    # A save moves the execution to the front: the order follows updated_at.
    await storage.save_state_async(
        head("exec-0", status=ExecutionStatus.COMPLETED, updated_at=base + timedelta(days=1))
    )
    expect_equal(
        await ids(storage, limit=2), ["exec-0", "exec-3"], "list_executions_async(limit=2) after an update"
    )


@check("stats.shape")
async def _stats(s: Subject) -> None:
    """get_stats returns {backend, total_executions, by_status} with every status; deleted ids not counted."""
    storage = s.storage
    await storage.save_state_async(head("exec-gone"))
    await storage.delete_state_async("exec-gone")
    empty = await storage.get_stats_async()
    expect_equal(
        empty,
        {
            "backend": storage.backend_name,
            "total_executions": 0,
            "by_status": {st.value: 0 for st in ExecutionStatus},
        },
        "get_stats_async() of a storage whose only execution was deleted",
    )
    for i, status in enumerate([ExecutionStatus.SUCCESS, ExecutionStatus.FAILED, ExecutionStatus.FAILED]):
        await storage.save_state_async(head(f"exec-{i}", status=status))
    stats = await storage.get_stats_async()
    expect_equal(
        stats,
        {
            "backend": storage.backend_name,
            "total_executions": 3,
            "by_status": {"success": 1, "paused": 0, "failed": 2, "completed": 0, "cancelled": 0},
        },
        "get_stats_async() after saving 1 success and 2 failed executions",
    )


# ---- sync twins ----------------------------------------------------------------------------------


def _sync_round(storage: DurableExecutionStorage, tag: str) -> None:
    """Every sync twin once; raises ConformanceFailure naming the twin that misbehaved."""
    eid = f"exec-sync-{tag}"
    first, second = head(eid, status=ExecutionStatus.PAUSED), head(eid, 1, status=ExecutionStatus.PAUSED)
    storage.save_state(first)
    expect_equal(storage.load_state(eid), first, f"load_state after save_state ({tag})")
    storage.append_step(second, step(eid, 0))
    expect_equal(storage.load_state(eid), second, f"load_state after append_step ({tag})")
    expect_equal([e.seq for e in storage.load_steps(eid)], [0], f"load_steps ({tag})")
    third = head(eid, 3, status=ExecutionStatus.PAUSED)
    storage.append_steps(third, [step(eid, 1), step(eid, 2)])
    expect_equal(storage.load_state(eid), third, f"load_state after append_steps ({tag})")
    expect_equal(
        [e.seq for e in storage.load_steps(eid)], [0, 1, 2], f"load_steps after append_steps ({tag})"
    )
    expect_equal([r.execution_id for r in storage.list_executions()], [eid], f"list_executions ({tag})")
    expect_equal(
        [r.execution_id for r in storage.list_executions(ExecutionStatus.PAUSED, limit=1)],
        [eid],
        f"list_executions(PAUSED, limit=1) ({tag})",
    )
    stats = storage.get_stats()
    expect(
        stats.get("total_executions") == 1 and stats.get("by_status", {}).get("paused") == 1,
        f"get_stats ({tag}) returned {stats!r}",
    )
    leased = storage.acquire_lease(eid, "w1", 30)
    expect_equal(leased.lease_owner, "w1", f"acquire_lease(...).lease_owner ({tag})")
    expect(
        storage.renew_lease(eid, "w1", 30) > datetime.now(UTC), f"renew_lease ({tag}) returned a past expiry"
    )
    expect_raises_sync(
        ExecutionLeasedError, lambda: storage.delete_state(eid), f"delete_state of a leased id ({tag})"
    )
    expect_equal(storage.release_lease(eid, "w1"), True, f"release_lease ({tag})")
    expect_equal(storage.cleanup_old_executions(1), 0, f"cleanup_old_executions(1) ({tag})")
    expect_equal(storage.delete_state(eid), True, f"delete_state ({tag})")
    expect_equal(
        storage.delete_state(eid, force=True), False, f"delete_state(force=True) of a deleted id ({tag})"
    )


@check("sync_twins.inside_running_loop")
async def _sync_inside_loop(s: Subject) -> None:
    """Every sync twin works when called from a thread whose event loop is running (e.g. Jupyter)."""
    asyncio.get_running_loop()  # this check runs inside the event loop
    _sync_round(s.storage, "in-loop")


@check("sync_twins.without_loop")
async def _sync_without_loop(s: Subject) -> None:
    """Every sync twin works from a plain thread without an event loop (a script)."""
    await asyncio.to_thread(_sync_round, s.storage, "no-loop")


# ---- damaged records -----------------------------------------------------------------------------


@check("corrupt_record.skipped_by_list_and_stats", needs=["raw_writer"])
async def _corrupt(s: Subject) -> None:
    """A damaged head raises CorruptRecordError on load, is skipped by list and stats, and can be deleted."""
    storage = s.storage
    await storage.save_state_async(head("exec-good", status=ExecutionStatus.COMPLETED))
    await storage.save_state_async(head("exec-bad"))
    await s.write_raw("exec-bad", b'{"execution_id": "exec-bad", "status": ')  # torn JSON
    await s.write_raw(
        "exec-shape", b'{"execution_id": "exec-shape", "step_index": "x"}'
    )  # wrong shape, new id
    for eid in ("exec-bad", "exec-shape"):
        error = await expect_raises(
            CorruptRecordError, storage.load_state_async(eid), f"load_state_async of damaged {eid!r}"
        )
        expect(
            getattr(error, "execution_id", None) == eid and eid in str(error),
            f"CorruptRecordError does not name {eid!r}: {error}",
        )
    expect_equal(await ids(storage), ["exec-good"], "list_executions_async() with damaged heads stored")
    stats = await storage.get_stats_async()
    expect(
        stats.get("total_executions") == 1 and stats.get("by_status", {}).get("completed") == 1,
        f"get_stats_async() counted damaged heads: {stats!r}",
    )
    expect_equal(
        await storage.delete_state_async("exec-bad"), True, "delete_state_async of a damaged execution"
    )
    expect_equal(
        await storage.load_state_async("exec-bad"), None, "load_state_async after deleting a damaged head"
    )


@check("newer_schema.skipped_by_list_and_stats", needs=["raw_writer"])
async def _newer_schema(s: Subject) -> None:
    """A head of a newer schema raises IncompatibleSchemaError on load; list and stats skip it."""
    storage = s.storage
    await storage.save_state_async(head("exec-now"))
    future: ExecutionRecord = head("exec-future", schema_version=SCHEMA_VERSION + 1)
    await s.write_raw("exec-future", encode_head(future))
    error = await expect_raises(
        IncompatibleSchemaError,
        storage.load_state_async("exec-future"),
        "load_state_async of a newer-schema head",
    )
    expect(
        getattr(error, "found", None) == SCHEMA_VERSION + 1
        and getattr(error, "execution_id", None) == "exec-future",
        f"IncompatibleSchemaError says found={getattr(error, 'found', None)!r} for "
        f"{getattr(error, 'execution_id', None)!r}; expected {SCHEMA_VERSION + 1} for 'exec-future'",
    )
    expect_equal(await ids(storage), ["exec-now"], "list_executions_async() with a newer-schema head stored")
    stats = await storage.get_stats_async()
    expect_equal(
        stats.get("total_executions"), 1, "get_stats_async()['total_executions'] with a newer-schema head"
    )
