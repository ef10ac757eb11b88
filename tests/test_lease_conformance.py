"""Lease contract, run against every storage backend (see storage/base.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from conftest import Factory
from perdure.errors import ExecutionLeasedError, ExecutionNotFoundError, LeaseLostError, UserError
from perdure.records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord, utcnow
from perdure.storage import DurableExecutionStorage


def _step(execution_id: str, seq: int) -> StepRecord:
    return StepRecord(
        execution_id=execution_id, seq=seq, kind=StepKind.TOOL_CALL, name="tool:x", key=f"k{seq}"
    )


async def test_acquire_unknown_execution_is_not_found(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(ExecutionRecord(execution_id="exec-other"))  # the storage exists
    with pytest.raises(ExecutionNotFoundError, match="exec-none"):
        await storage.acquire_lease_async("exec-none", "w1", 30)


async def test_acquire_sets_lease_visible_on_load_and_list(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(ExecutionRecord(execution_id="exec-l"))
    before = utcnow()
    head = await storage.acquire_lease_async("exec-l", "w1", 30)
    assert head.execution_id == "exec-l" and head.lease_owner == "w1"
    assert head.lease_expires_at is not None
    assert before + timedelta(seconds=25) < head.lease_expires_at < utcnow() + timedelta(seconds=35)
    loaded = await storage.load_state_async("exec-l")
    assert loaded is not None and loaded.lease_owner == "w1"
    assert loaded.lease_expires_at == head.lease_expires_at
    listed = await storage.list_executions_async()
    assert [(h.execution_id, h.lease_owner) for h in listed] == [("exec-l", "w1")]


async def test_second_owner_is_refused_until_expiry(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(ExecutionRecord(execution_id="exec-l"))
    await storage.acquire_lease_async("exec-l", "w1", 0.3)
    with pytest.raises(ExecutionLeasedError) as info:
        await storage.acquire_lease_async("exec-l", "w2", 30)
    assert info.value.owner == "w1" and info.value.execution_id == "exec-l"
    assert "exec-l" in str(info.value) and "w1" in str(info.value)
    # The holder re-acquiring extends its own lease.
    again = await storage.acquire_lease_async("exec-l", "w1", 0.3)
    assert again.lease_owner == "w1"
    await asyncio.sleep(0.45)
    taken = await storage.acquire_lease_async("exec-l", "w2", 30)
    assert taken.lease_owner == "w2"


async def test_renew_and_release(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(ExecutionRecord(execution_id="exec-l"))
    first = await storage.acquire_lease_async("exec-l", "w1", 5)
    renewed = await storage.renew_lease_async("exec-l", "w1", 60)
    assert first.lease_expires_at is not None and renewed > first.lease_expires_at
    with pytest.raises(LeaseLostError) as info:
        await storage.renew_lease_async("exec-l", "w2", 60)
    assert info.value.holder == "w1"
    assert await storage.release_lease_async("exec-l", "w2") is False
    assert await storage.release_lease_async("exec-l", "w1") is True
    assert await storage.release_lease_async("exec-l", "w1") is False
    loaded = await storage.load_state_async("exec-l")
    assert loaded is not None and loaded.lease_owner is None and loaded.lease_expires_at is None
    with pytest.raises(LeaseLostError):
        await storage.renew_lease_async("exec-l", "w1", 5)
    # Anyone can take a released lease at once.
    assert (await storage.acquire_lease_async("exec-l", "w2", 5)).lease_owner == "w2"


async def test_expired_own_lease_is_renewed_when_not_taken_over(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(ExecutionRecord(execution_id="exec-l"))
    await storage.acquire_lease_async("exec-l", "w1", 0.1)
    await asyncio.sleep(0.2)
    expires = await storage.renew_lease_async("exec-l", "w1", 30)
    assert expires > utcnow() + timedelta(seconds=25)


async def test_renew_of_deleted_execution_is_lost(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(ExecutionRecord(execution_id="exec-l"))
    await storage.acquire_lease_async("exec-l", "w1", 30)
    assert await storage.delete_state_async("exec-l", force=True) is True
    with pytest.raises(LeaseLostError):
        await storage.renew_lease_async("exec-l", "w1", 30)
    # Once cleanup purged the tombstone, a new execution with the same id starts without the old lease.
    await asyncio.sleep(0.01)
    assert await storage.cleanup_old_executions_async(0) == 0
    await storage.save_state_async(ExecutionRecord(execution_id="exec-l"))
    loaded = await storage.load_state_async("exec-l")
    assert loaded is not None and loaded.lease_owner is None


async def test_head_writes_keep_the_stored_lease(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(ExecutionRecord(execution_id="exec-l"))
    head = await storage.acquire_lease_async("exec-l", "w1", 30)
    # A write carrying a different (stale) expiry does not change the stored lease.
    await storage.save_state_async(head.model_copy(update={"step_name": "x", "lease_expires_at": utcnow()}))
    await storage.append_step_async(head.model_copy(update={"next_seq": 1}), _step("exec-l", 0))
    loaded = await storage.load_state_async("exec-l")
    assert loaded is not None and loaded.next_seq == 1
    assert (loaded.lease_owner, loaded.lease_expires_at) == ("w1", head.lease_expires_at)


async def test_writes_are_fenced_by_an_unexpired_lease(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(ExecutionRecord(execution_id="exec-l"))
    await storage.acquire_lease_async("exec-l", "w1", 0.3)
    stale = ExecutionRecord(execution_id="exec-l", lease_owner="w0", next_seq=1, step_name="stale")
    with pytest.raises(LeaseLostError) as info:
        await storage.append_step_async(stale, _step("exec-l", 0))
    assert info.value.holder == "w1" and info.value.execution_id == "exec-l"
    with pytest.raises(LeaseLostError):
        await storage.save_state_async(stale)
    # An unleased writer (no owner) is refused too while the lease is live.
    with pytest.raises(LeaseLostError):
        await storage.save_state_async(stale.model_copy(update={"lease_owner": None}))
    # Nothing was written.
    assert await storage.load_steps_async("exec-l") == []
    loaded = await storage.load_state_async("exec-l")
    assert loaded is not None and loaded.step_name == "" and loaded.lease_owner == "w1"
    # Once the lease expired (nobody took it over), writes go through again.
    await asyncio.sleep(0.45)
    await storage.append_step_async(stale, _step("exec-l", 0))
    assert len(await storage.load_steps_async("exec-l")) == 1


async def test_lease_survives_reopen(reopen: Factory) -> None:
    first = reopen()
    await first.save_state_async(ExecutionRecord(execution_id="exec-l", status=ExecutionStatus.SUCCESS))
    await first.acquire_lease_async("exec-l", "w1", 30)
    first.close()
    second = reopen()
    with pytest.raises(ExecutionLeasedError):
        await second.acquire_lease_async("exec-l", "w2", 30)
    loaded = await second.load_state_async("exec-l")
    assert loaded is not None and loaded.lease_owner == "w1"
    second.close()


async def test_ttl_must_be_positive(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(ExecutionRecord(execution_id="exec-l"))
    with pytest.raises(UserError, match="ttl"):
        await storage.acquire_lease_async("exec-l", "w1", 0)


def test_sync_twins(storage: DurableExecutionStorage) -> None:
    storage.save_state(ExecutionRecord(execution_id="exec-l"))
    assert storage.acquire_lease("exec-l", "w1", 30).lease_owner == "w1"
    assert storage.renew_lease("exec-l", "w1", 30) > utcnow()
    assert storage.release_lease("exec-l", "w1") is True


async def test_steal_from_is_a_compare_and_swap(storage: DurableExecutionStorage) -> None:
    await storage.save_state_async(ExecutionRecord(execution_id="exec-l"))
    await storage.acquire_lease_async("exec-l", "dead-worker", 60)
    with pytest.raises(ExecutionLeasedError):  # naming the wrong holder takes nothing
        await storage.acquire_lease_async("exec-l", "w2", 60, steal_from="someone-else")
    taken = await storage.acquire_lease_async("exec-l", "w2", 60, steal_from="dead-worker")
    assert taken.lease_owner == "w2"
    with pytest.raises(ExecutionLeasedError):  # a second thief loses the race
        await storage.acquire_lease_async("exec-l", "w3", 60, steal_from="dead-worker")
