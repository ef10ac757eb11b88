"""Lease properties: acquire, exclusivity, expiry, renew, release, compare-and-swap steals, fencing.

Checks that wait for a lease to expire use the kit's short `lease_ttl` (0.3 s by default).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from ..errors import ExecutionLeasedError, ExecutionNotFoundError, LeaseLostError, UserError
from ..records import ExecutionStatus, utcnow
from ._checks import Subject, check, create, expect, expect_equal, expect_ok, expect_raises, head, step

__all__: list[str] = []


@check("lease.acquire")
async def _acquire(s: Subject) -> None:
    """acquire_lease sets owner and expiry (now + ttl), seen by load and list; unknown ids are not found."""
    storage = s.storage
    await create(storage, "exec-l")
    error = await expect_raises(
        ExecutionNotFoundError,
        storage.acquire_lease_async("exec-none", "w1", 30),
        "acquire_lease_async of an unknown id",
    )
    expect("exec-none" in str(error), f"ExecutionNotFoundError does not name the id: {error}")
    await expect_raises(
        UserError, storage.acquire_lease_async("exec-l", "w1", 0), "acquire_lease_async with ttl 0"
    )
    before = utcnow()
    leased = await storage.acquire_lease_async("exec-l", "w1", 30)
    after = utcnow()
    expect_equal(
        (leased.execution_id, leased.lease_owner), ("exec-l", "w1"), "acquire_lease_async(...) (id, owner)"
    )
    expires = leased.lease_expires_at
    expect(
        expires is not None and before + timedelta(seconds=25) < expires < after + timedelta(seconds=35),
        f"acquire_lease_async(ttl=30) returned lease_expires_at={expires!r}; expected about now + 30 s",
    )
    loaded = await storage.load_state_async("exec-l")
    expect(loaded is not None, "load_state_async returned None for a leased execution")
    assert loaded is not None
    expect_equal(
        (loaded.lease_owner, loaded.lease_expires_at), ("w1", expires), "the lease seen by load_state_async"
    )
    listed = [
        (h.execution_id, h.lease_owner, h.lease_expires_at) for h in await storage.list_executions_async()
    ]
    expect_equal(listed, [("exec-l", "w1", expires)], "the lease seen by list_executions_async")
    # The holder acquiring again extends its own lease.
    again = await storage.acquire_lease_async("exec-l", "w1", 60)
    expect(
        again.lease_owner == "w1"
        and again.lease_expires_at is not None
        and expires is not None
        and again.lease_expires_at > expires,
        f"re-acquiring by the holder returned {again.lease_owner!r} until {again.lease_expires_at!r}; "
        f"expected 'w1' with a later expiry than {expires!r}",
    )


@check("lease.exclusive")
async def _exclusive(s: Subject) -> None:
    """While a lease is unexpired, another owner's acquire raises ExecutionLeasedError naming the holder."""
    storage = s.storage
    await create(storage, "exec-l")
    await storage.acquire_lease_async("exec-l", "w1", 30)
    error = await expect_raises(
        ExecutionLeasedError,
        storage.acquire_lease_async("exec-l", "w2", 30),
        "acquire_lease_async by a second owner",
    )
    expect(
        isinstance(error, ExecutionLeasedError) and error.owner == "w1" and error.execution_id == "exec-l",
        f"ExecutionLeasedError names owner {getattr(error, 'owner', None)!r} of "
        f"{getattr(error, 'execution_id', None)!r}; expected 'w1' of 'exec-l'",
    )
    loaded = await storage.load_state_async("exec-l")
    expect(
        loaded is not None and loaded.lease_owner == "w1",
        f"a refused acquire changed the lease: {getattr(loaded, 'lease_owner', None)!r}",
    )


@check("lease.steal_on_expiry")
async def _steal_on_expiry(s: Subject) -> None:
    """Once a lease expired, another owner's acquire takes it over; if nobody did, its holder may renew it."""
    storage = s.storage
    await create(storage, "exec-l")
    await create(storage, "exec-own")
    await storage.acquire_lease_async("exec-l", "w1", s.lease_ttl)
    await storage.acquire_lease_async("exec-own", "w1", s.lease_ttl)
    since = asyncio.get_running_loop().time()
    await expect_raises(
        ExecutionLeasedError,
        storage.acquire_lease_async("exec-l", "w2", 30),
        "acquire_lease_async by a second owner before expiry",
    )
    await s.expire(since)
    taken = await expect_ok(
        storage.acquire_lease_async("exec-l", "w2", 30),
        "acquire_lease_async by another owner after the lease expired",
    )
    expect_equal(
        taken.lease_owner, "w2", "lease_owner returned by acquire_lease_async after the lease expired"
    )
    await expect_raises(
        LeaseLostError,
        storage.renew_lease_async("exec-l", "w1", 30),
        "renew_lease_async by the previous holder after another owner took the expired lease",
    )
    expires = await expect_ok(
        storage.renew_lease_async("exec-own", "w1", 30),
        "renew_lease_async by the holder of an expired lease nobody took over",
    )
    expect(
        expires > utcnow() + timedelta(seconds=25),
        f"renew_lease_async of an own expired lease (not taken over) returned {expires!r}; "
        f"expected now + 30 s",
    )


@check("lease.steal_from_compare_and_swap")
async def _steal_from(s: Subject) -> None:
    """acquire_lease(steal_from=holder) takes an unexpired lease only from exactly that holder, once."""
    storage = s.storage
    await create(storage, "exec-l")
    await storage.acquire_lease_async("exec-l", "dead-worker", 60)
    await expect_raises(
        ExecutionLeasedError,
        storage.acquire_lease_async("exec-l", "w2", 60, steal_from="someone-else"),
        "acquire_lease_async(steal_from=<not the holder>)",
    )
    taken = await storage.acquire_lease_async("exec-l", "w2", 60, steal_from="dead-worker")
    expect_equal(taken.lease_owner, "w2", "lease_owner after acquire_lease_async(steal_from=<the holder>)")
    await expect_raises(
        ExecutionLeasedError,
        storage.acquire_lease_async("exec-l", "w3", 60, steal_from="dead-worker"),
        "a second acquire_lease_async(steal_from='dead-worker') after the lease was taken",
    )


@check("lease.renew")
async def _renew(s: Subject) -> None:
    """renew_lease extends the holder's lease and returns the new expiry; others get LeaseLostError."""
    storage = s.storage
    await create(storage, "exec-l")
    first = await storage.acquire_lease_async("exec-l", "w1", 5)
    renewed = await storage.renew_lease_async("exec-l", "w1", 60)
    expect(
        first.lease_expires_at is not None and renewed > first.lease_expires_at,
        f"renew_lease_async(ttl=60) returned {renewed!r}, not later than the ttl=5 expiry "
        f"{first.lease_expires_at!r}",
    )
    loaded = await storage.load_state_async("exec-l")
    expect_equal(
        getattr(loaded, "lease_expires_at", None), renewed, "lease_expires_at after renew_lease_async"
    )
    error = await expect_raises(
        LeaseLostError, storage.renew_lease_async("exec-l", "w2", 60), "renew_lease_async by a non-holder"
    )
    expect_equal(getattr(error, "holder", None), "w1", "LeaseLostError.holder")
    await expect_raises(
        LeaseLostError, storage.renew_lease_async("exec-none", "w1", 60), "renew_lease_async of an unknown id"
    )


@check("lease.release")
async def _release(s: Subject) -> None:
    """release_lease clears the holder's lease (idempotent, False for others); anyone may then acquire."""
    storage = s.storage
    await create(storage, "exec-l")
    await storage.acquire_lease_async("exec-l", "w1", 30)
    expect_equal(
        await storage.release_lease_async("exec-l", "w2"), False, "release_lease_async by a non-holder"
    )
    expect_equal(await storage.release_lease_async("exec-l", "w1"), True, "release_lease_async by the holder")
    expect_equal(await storage.release_lease_async("exec-l", "w1"), False, "a second release_lease_async")
    expect_equal(
        await storage.release_lease_async("exec-none", "w1"), False, "release_lease_async of an unknown id"
    )
    loaded = await storage.load_state_async("exec-l")
    expect(
        loaded is not None and loaded.lease_owner is None and loaded.lease_expires_at is None,
        f"after release_lease_async the head still has lease {getattr(loaded, 'lease_owner', None)!r} until "
        f"{getattr(loaded, 'lease_expires_at', None)!r}",
    )
    await expect_raises(
        LeaseLostError,
        storage.renew_lease_async("exec-l", "w1", 5),
        "renew_lease_async after release_lease_async",
    )
    taken = await storage.acquire_lease_async("exec-l", "w2", 5)
    expect_equal(
        taken.lease_owner, "w2", "lease_owner of acquire_lease_async by another owner after a release"
    )


@check("lease.kept_by_head_writes")
async def _kept_by_writes(s: Subject) -> None:
    """save_state and append_step never change the stored lease, whatever lease fields the record carries."""
    storage = s.storage
    await create(storage, "exec-l")
    leased = await storage.acquire_lease_async("exec-l", "w1", 30)
    stale = leased.model_copy(update={"step_name": "x", "lease_expires_at": utcnow()})
    await storage.save_state_async(stale)
    await storage.append_step_async(leased.model_copy(update={"next_seq": 1}), step("exec-l", 0))
    loaded = await storage.load_state_async("exec-l")
    expect_equal(getattr(loaded, "next_seq", None), 1, "next_seq after the lease holder's append_step_async")
    assert loaded is not None
    expect_equal(
        (loaded.lease_owner, loaded.lease_expires_at),
        ("w1", leased.lease_expires_at),
        "the stored lease after head writes carrying another expiry",
    )


@check("lease.fencing")
async def _fencing(s: Subject) -> None:
    """Writes by anyone but the holder of an unexpired lease raise LeaseLostError and change nothing."""
    storage = s.storage
    await create(storage, "exec-l")
    await storage.acquire_lease_async("exec-l", "w1", s.lease_ttl)
    since = asyncio.get_running_loop().time()
    stale = head("exec-l", 1, lease_owner="w0", step_name="stale")
    error = await expect_raises(
        LeaseLostError,
        storage.append_step_async(stale, step("exec-l", 0)),
        "append_step_async by 'w0' while 'w1' holds an unexpired lease",
    )
    expect(
        getattr(error, "holder", None) == "w1" and getattr(error, "execution_id", None) == "exec-l",
        f"LeaseLostError names holder {getattr(error, 'holder', None)!r} of "
        f"{getattr(error, 'execution_id', None)!r}; expected 'w1' of 'exec-l'",
    )
    await expect_raises(
        LeaseLostError, storage.save_state_async(stale), "save_state_async by 'w0' while 'w1' holds the lease"
    )
    await expect_raises(
        LeaseLostError,
        storage.save_state_async(stale.model_copy(update={"lease_owner": None})),
        "save_state_async by an unleased writer while 'w1' holds the lease",
    )
    await expect_raises(
        LeaseLostError,
        storage.append_step_async(stale.model_copy(update={"lease_owner": None}), step("exec-l", 0)),
        "append_step_async by an unleased writer while 'w1' holds the lease",
    )
    expect_equal(
        await storage.load_steps_async("exec-l"), [], "journal after fenced appends (nothing written)"
    )
    loaded = await storage.load_state_async("exec-l")
    expect_equal(
        (getattr(loaded, "step_name", None), getattr(loaded, "lease_owner", None)),
        ("", "w1"),
        "(step_name, lease_owner) of the head after fenced writes (they must change nothing)",
    )
    # Once the lease expired (nobody took it over), writes go through again.
    await s.expire(since)
    await expect_ok(
        storage.append_step_async(stale, step("exec-l", 0)),
        "append_step_async by 'w0' after the lease of 'w1' expired",
    )
    expect_equal(len(await storage.load_steps_async("exec-l")), 1, "journal length after the lease expired")


@check("lease.survives_reopen", needs=["reopen"])
async def _survives_reopen(s: Subject) -> None:
    """A lease is stored: another instance on the same store sees it and is refused."""
    first = s.storage
    await create(first, "exec-l", status=ExecutionStatus.SUCCESS)
    await first.acquire_lease_async("exec-l", "w1", 30)
    await first.close_async()
    second = await s.reopen()
    await expect_raises(
        ExecutionLeasedError,
        second.acquire_lease_async("exec-l", "w2", 30),
        "acquire_lease_async by another owner through a new instance",
    )
    loaded = await second.load_state_async("exec-l")
    expect_equal(getattr(loaded, "lease_owner", None), "w1", "lease_owner read through a new instance")
