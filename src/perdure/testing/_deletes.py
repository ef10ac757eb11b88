"""Delete properties: deletes, the tombstones that keep them deleted, leases that block them, cleanup."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from ..errors import (
    ExecutionDeletedError,
    ExecutionLeasedError,
    ExecutionNotFoundError,
    LeaseLostError,
    UserError,
)
from ..records import ExecutionStatus
from ._checks import (
    Subject,
    check,
    create,
    expect,
    expect_equal,
    expect_ok,
    expect_raises,
    head,
    ids,
    invisible,
    step,
)

# ---- deletes and tombstones ----------------------------------------------------------------------


@check("delete.removes_head_and_journal")
async def _delete(s: Subject) -> None:
    """delete_state removes head and journal and returns True; absent ids return False."""
    storage = s.storage
    await create(storage, "exec-del", steps=3)
    await create(storage, "exec-keep", steps=1)
    expect_equal(
        await storage.delete_state_async("exec-del"), True, "delete_state_async of an existing execution"
    )
    await invisible(storage, "exec-del", "after delete_state_async")
    expect_equal(
        await storage.delete_state_async("exec-del"), False, "a second delete_state_async of the same id"
    )
    expect_equal(
        await storage.delete_state_async("never-existed"), False, "delete_state_async of an unknown id"
    )
    expect(
        await storage.load_state_async("exec-keep") is not None, "deleting exec-del also removed exec-keep"
    )
    expect_equal(
        len(await storage.load_steps_async("exec-keep")), 1, "journal length of exec-keep after the delete"
    )
    stats = await storage.get_stats_async()
    expect_equal(stats.get("total_executions"), 1, "get_stats_async()['total_executions'] after the delete")


@check("delete.no_recreation")
async def _tombstone(s: Subject) -> None:
    """After a delete every write of the id raises ExecutionDeletedError and reads see nothing."""
    storage = s.storage
    await create(storage, "exec-t", steps=2)
    await create(storage, "exec-other", steps=1)
    expect_equal(await storage.delete_state_async("exec-t"), True, "delete_state_async('exec-t')")
    before = await storage.get_stats_async()
    writes: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        (
            "save_state_async of a new run reusing the deleted id",
            lambda: storage.save_state_async(head("exec-t")),
        ),
        (
            "save_state_async by the deleted execution's running attempt",
            lambda: storage.save_state_async(
                head("exec-t", 2, lease_owner="w1", status=ExecutionStatus.FAILED)
            ),
        ),
        (
            "append_step_async of the next seq",
            lambda: storage.append_step_async(head("exec-t", 3), step("exec-t", 2)),
        ),
        (
            "append_step_async of seq 0",
            lambda: storage.append_step_async(head("exec-t", 1), step("exec-t", 0)),
        ),
    ]
    for what, write in writes:
        error = await expect_raises(ExecutionDeletedError, write(), f"{what} after delete_state_async")
        expect(
            getattr(error, "execution_id", None) == "exec-t",
            f"ExecutionDeletedError names {getattr(error, 'execution_id', None)!r}, expected 'exec-t'",
        )
    await expect_raises(
        ExecutionNotFoundError,
        storage.acquire_lease_async("exec-t", "w1", 30),
        "acquire_lease_async of a deleted execution",
    )
    await expect_raises(
        LeaseLostError,
        storage.renew_lease_async("exec-t", "w1", 30),
        "renew_lease_async of a deleted execution",
    )
    expect_equal(
        await storage.release_lease_async("exec-t", "w1"), False, "release_lease_async of a deleted execution"
    )
    expect_equal(
        await storage.delete_state_async("exec-t"), False, "delete_state_async of a deleted execution"
    )
    expect_equal(
        await storage.delete_state_async("exec-t", force=True),
        False,
        "delete_state_async(force=True) of a deleted id",
    )
    await invisible(storage, "exec-t", "after refused writes of a deleted id")
    expect_equal(
        await storage.get_stats_async(), before, "get_stats_async() after refused writes of a deleted id"
    )
    expect(await storage.load_state_async("exec-other") is not None, "the other execution disappeared")


@check("delete.leased_refused_force_tombstone")
async def _delete_leased(s: Subject) -> None:
    """An unexpired lease blocks a delete (ExecutionLeasedError, nothing changed) unless force=True."""
    storage = s.storage
    await create(storage, "exec-stale")
    await storage.acquire_lease_async("exec-stale", "w2", s.lease_ttl)  # expires while the rest runs
    stale_since = asyncio.get_running_loop().time()
    await create(storage, "exec-run", steps=2)
    leased = await storage.acquire_lease_async("exec-run", "w1", 30)
    error = await expect_raises(
        ExecutionLeasedError,
        storage.delete_state_async("exec-run"),
        "delete_state_async of a leased execution",
    )
    expect(
        isinstance(error, ExecutionLeasedError) and error.owner == "w1" and error.execution_id == "exec-run",
        f"ExecutionLeasedError names owner {getattr(error, 'owner', None)!r} of "
        f"{getattr(error, 'execution_id', None)!r}; expected 'w1' of 'exec-run'",
    )
    current = await storage.load_state_async("exec-run")
    expect_equal(
        (getattr(current, "lease_owner", None), getattr(current, "next_seq", None)),
        ("w1", 2),
        "(lease_owner, next_seq) after a refused delete",
    )
    seqs = [e.seq for e in await storage.load_steps_async("exec-run")]
    expect_equal(seqs, [0, 1], "journal after a refused delete")
    await storage.append_step_async(head("exec-run", 3, lease_owner="w1"), step("exec-run", 2))  # still runs
    expect_equal(
        await storage.delete_state_async("exec-run", force=True),
        True,
        "delete_state_async(force=True) of a leased id",
    )
    await invisible(storage, "exec-run", "after a forced delete")
    # The attempt goes on: its next step, its failure record, its heartbeat all fail; nothing returns.
    await expect_raises(
        ExecutionDeletedError,
        storage.append_step_async(leased.model_copy(update={"next_seq": 4}), step("exec-run", 3)),
        "append_step_async by the lease holder after a forced delete",
    )
    await expect_raises(
        ExecutionDeletedError,
        storage.save_state_async(leased.model_copy(update={"status": ExecutionStatus.FAILED})),
        "save_state_async by the lease holder after a forced delete",
    )
    await expect_raises(
        LeaseLostError,
        storage.renew_lease_async("exec-run", "w1", 30),
        "renew_lease_async by the lease holder after a forced delete",
    )
    expect_equal(
        await storage.release_lease_async("exec-run", "w1"),
        False,
        "release_lease_async after a forced delete",
    )
    await invisible(storage, "exec-run", "after the holder's writes following a forced delete")
    # An expired lease does not block: its holder is not running the execution any more.
    await s.expire(stale_since)
    deleted = await expect_ok(
        storage.delete_state_async("exec-stale"), "delete_state_async of an execution whose lease expired"
    )
    expect_equal(deleted, True, "delete_state_async of an execution whose lease expired")


# ---- cleanup -------------------------------------------------------------------------------------


@check("cleanup.older_than")
async def _cleanup(s: Subject) -> None:
    """cleanup_old_executions deletes heads and journals updated before the cutoff and returns how many."""
    storage = s.storage
    old = datetime.now(UTC) - timedelta(days=30)
    await create(storage, "exec-old", steps=2)
    await storage.save_state_async(head("exec-old", 2, updated_at=old, created_at=old))
    await storage.save_state_async(head("exec-older", updated_at=old - timedelta(days=1)))
    await create(storage, "exec-new", steps=1)
    expect_equal(
        await storage.cleanup_old_executions_async(older_than_days=7), 2, "cleanup_old_executions_async(7)"
    )
    await invisible(storage, "exec-old", "after cleanup_old_executions_async")
    expect(
        await storage.load_state_async("exec-new") is not None,
        "cleanup_old_executions_async(7) deleted a new execution",
    )
    expect_equal(await storage.cleanup_old_executions_async(7), 0, "a second cleanup_old_executions_async(7)")
    await asyncio.sleep(0.01)
    expect_equal(await storage.cleanup_old_executions_async(0), 1, "cleanup_old_executions_async(0)")
    await expect_raises(
        UserError, storage.cleanup_old_executions_async(-1), "cleanup_old_executions_async(-1)"
    )


@check("cleanup.older_than_skips_leased")
async def _cleanup_leased(s: Subject) -> None:
    """Cleanup skips old executions with an unexpired lease and deletes those whose lease expired."""
    storage = s.storage
    old = datetime.now(UTC) - timedelta(days=30)
    for eid in ("old-running", "old-idle", "old-expired"):
        await create(storage, eid, steps=1)
        await storage.save_state_async(head(eid, 1, updated_at=old, created_at=old))
    await create(storage, "new-idle")
    await storage.acquire_lease_async("old-running", "w1", 30)
    await storage.acquire_lease_async("old-expired", "w2", s.lease_ttl)
    await s.expire()
    removed = await expect_ok(
        storage.cleanup_old_executions_async(7),
        "cleanup_old_executions_async(7) with one running, one expired",
    )
    expect_equal(removed, 2, "cleanup_old_executions_async(7) with one running, one expired")
    expect_equal(sorted(await ids(storage)), ["new-idle", "old-running"], "executions left by cleanup")
    expect_equal(
        [e.seq for e in await storage.load_steps_async("old-running")],
        [0],
        "journal of the running execution",
    )
    for eid in ("old-idle", "old-expired"):  # cleanup deletes leave tombstones too
        await expect_raises(
            ExecutionDeletedError,
            storage.save_state_async(head(eid)),
            f"save_state_async of {eid!r} after cleanup",
        )
    await storage.release_lease_async("old-running", "w1")
    expect_equal(
        await storage.cleanup_old_executions_async(7), 1, "cleanup_old_executions_async(7) after release"
    )


@check("cleanup.purges_tombstones")
async def _cleanup_tombstones(s: Subject) -> None:
    """Cleanup keeps fresh tombstones and purges those older than its cutoff: the id is free again."""
    storage = s.storage
    await create(storage, "exec-t", steps=2)
    await storage.acquire_lease_async("exec-t", "w1", 30)
    expect_equal(
        await storage.delete_state_async("exec-t", force=True), True, "delete_state_async(force=True)"
    )
    expect_equal(await storage.cleanup_old_executions_async(7), 0, "cleanup_old_executions_async(7)")
    await expect_raises(
        ExecutionDeletedError, storage.save_state_async(head("exec-t")), "save_state_async after cleanup(7)"
    )
    await asyncio.sleep(0.01)
    expect_equal(
        await storage.cleanup_old_executions_async(0), 0, "cleanup_old_executions_async(0) (only a tombstone)"
    )
    await create(storage, "exec-t", steps=1)  # the id is free again, without the old lease or journal
    loaded = await storage.load_state_async("exec-t")
    expect(loaded is not None, "load_state_async of a new execution reusing a purged id returned None")
    expect_equal(
        getattr(loaded, "lease_owner", None), None, "lease_owner of a new execution reusing a purged id"
    )
    expect_equal(
        [e.seq for e in await storage.load_steps_async("exec-t")], [0], "journal of the re-created id"
    )


@check("cleanup.keeps_statuses")
async def _cleanup_keeps(s: Subject) -> None:
    """Cleanup never deletes an execution whose status is in keep_statuses (names, enums or 'a,b')."""
    storage = s.storage
    old = datetime.now(UTC) - timedelta(days=30)
    statuses = {
        "old-failed": ExecutionStatus.FAILED,
        "old-paused": ExecutionStatus.PAUSED,
        "old-completed": ExecutionStatus.COMPLETED,
        "old-cancelled": ExecutionStatus.CANCELLED,
    }
    for eid, status in statuses.items():
        await create(storage, eid, steps=1)
        await storage.save_state_async(head(eid, 1, status=status, updated_at=old, created_at=old))
    await create(storage, "new-failed", status=ExecutionStatus.FAILED)
    counted = await storage.count_old_executions_async(7, keep_statuses=["failed", ExecutionStatus.PAUSED])
    expect_equal(counted, 2, "count_old_executions_async(7, keep_statuses=['failed', PAUSED])")
    removed = await storage.cleanup_old_executions_async(7, keep_statuses=["failed", ExecutionStatus.PAUSED])
    expect_equal(removed, 2, "cleanup_old_executions_async(7, keep_statuses=['failed', PAUSED])")
    expect_equal(
        sorted(await ids(storage)),
        ["new-failed", "old-failed", "old-paused"],
        "executions left by a cleanup keeping failed and paused",
    )
    expect_equal(
        [e.seq for e in await storage.load_steps_async("old-failed")], [0], "journal of a kept execution"
    )
    expect_equal(
        await storage.cleanup_old_executions_async(7, keep_statuses="failed"),
        1,
        "cleanup_old_executions_async(7, keep_statuses='failed')",
    )
    expect_equal(sorted(await ids(storage)), ["new-failed", "old-failed"], "left by keep_statuses='failed'")
    expect_equal(
        await storage.cleanup_old_executions_async(7, keep_statuses=()),
        1,
        "cleanup_old_executions_async(7, keep_statuses=()) (keeps nothing)",
    )
    await expect_raises(
        UserError,
        storage.cleanup_old_executions_async(7, keep_statuses=["finished"]),
        "cleanup_old_executions_async(7, keep_statuses=['finished']) (no such status)",
    )


@check("cleanup.limit_oldest_first")
async def _cleanup_limit(s: Subject) -> None:
    """cleanup_old_executions(limit=n) deletes at most n, oldest first; count_old_executions counts."""
    storage = s.storage
    now = datetime.now(UTC)
    for index in range(5):
        when = now - timedelta(days=30 - index)
        eid = f"old-{index}"
        await create(storage, eid, steps=1)
        await storage.save_state_async(head(eid, 1, updated_at=when, created_at=when))
    await create(storage, "new-0")
    expect_equal(
        await storage.count_old_executions_async(7, keep_statuses=()), 5, "count_old_executions_async(7)"
    )
    expect_equal(
        await storage.cleanup_old_executions_async(7, keep_statuses=(), limit=2),
        2,
        "cleanup_old_executions_async(7, limit=2)",
    )
    expect_equal(
        sorted(await ids(storage)), ["new-0", "old-2", "old-3", "old-4"], "left by limit=2 (oldest go)"
    )
    expect_equal(
        await storage.count_old_executions_async(7, keep_statuses=()),
        3,
        "count_old_executions_async(7) after",
    )
    expect_equal(
        await storage.cleanup_old_executions_async(7, keep_statuses=(), limit=10),
        3,
        "cleanup_old_executions_async(7, limit=10) with 3 left",
    )
    await expect_raises(
        UserError,
        storage.cleanup_old_executions_async(7, limit=0),
        "cleanup_old_executions_async(7, limit=0)",
    )
