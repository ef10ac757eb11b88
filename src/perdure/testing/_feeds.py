"""Watching properties: reading a journal's tail, and the change feed that announces writes.

Each check documents its property in its docstring's first line (listed by `perdure.testing.PROPERTIES`)
and gets a fresh, empty storage. The contract is `DurableExecutionStorage.load_steps_after_async` and
`DurableExecutionStorage.change_feed` / `perdure.storage.ChangeFeed`. Writes come from a second
instance on the same data when the kit has a `reopen` hook (another process's view), else from the
storage itself. A storage whose `change_feed()` is None is polled by watchers: for it the feed
properties check what polling needs instead, that another instance's writes are visible at once.
"""

from __future__ import annotations

import asyncio

from ..errors import UserError
from ..storage.base import ChangeFeed, DurableExecutionStorage
from ._batches import batch
from ._checks import (
    ConformanceFailure,
    Subject,
    check,
    create,
    expect,
    expect_equal,
    expect_raises,
    head,
    step,
)

__all__: list[str] = []

ANNOUNCED_WITHIN = 0.1
"""Seconds within which a feed must announce a write that returned (PostgreSQL and Redis take ~1 ms)."""
QUIET_FOR = 0.3
"""Seconds a feed is watched to check that it announces nothing."""


async def _seqs_after(storage: DurableExecutionStorage, execution_id: str, after: int) -> list[int]:
    return [entry.seq for entry in await storage.load_steps_after_async(execution_id, after)]


@check("journal.steps_after")
async def _steps_after(s: Subject) -> None:
    """load_steps_after gives exactly the entries after a seq, in order (all after -1, none past the end)."""
    storage = s.storage
    await create(storage, "exec-tail", steps=3)
    writer = await s.writer()
    await writer.append_steps_async(head("exec-tail", 6), batch("exec-tail", 3, 3))
    journal = await storage.load_steps_async("exec-tail")
    expect_equal([e.seq for e in journal], [0, 1, 2, 3, 4, 5], "load_steps_async seqs")
    for after in range(-1, 8):
        tail = await storage.load_steps_after_async("exec-tail", after)
        expect_equal(tail, journal[after + 1 :], f"load_steps_after_async('exec-tail', {after})")
    expect_equal(await _seqs_after(storage, "exec-tail", -5), [0, 1, 2, 3, 4, 5], "load_steps_after(-5)")
    expect_equal(await _seqs_after(storage, "no-such-exec", 2), [], "load_steps_after of an unknown id")
    twin = await asyncio.to_thread(storage.load_steps_after, "exec-tail", 3)
    expect_equal(twin, journal[4:], "load_steps_after('exec-tail', 3) (sync twin)")
    # A watcher reads the tail, the run goes on, the watcher reads the new tail only.
    for seq in range(6, 9):
        await writer.append_step_async(head("exec-tail", seq + 1), step("exec-tail", seq))
        expect_equal(await _seqs_after(storage, "exec-tail", seq - 1), [seq], f"tail after seq {seq - 1}")
    await expect_raises(UserError, storage.load_steps_after_async("exec-tail", "2"), "load_steps_after('2')")  # type: ignore[arg-type]


async def _drain(feed: ChangeFeed) -> None:
    """Consume what the feed announced so far (the setup's own writes)."""
    for _ in range(100):
        if not await feed.wait(0.05):
            return


async def _announced(feed: ChangeFeed, execution_id: str | set[str], what: str) -> None:
    """Fail unless the feed announces `execution_id` (or each of a set) within `ANNOUNCED_WITHIN`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    wanted = {execution_id} if isinstance(execution_id, str) else execution_id
    heard: set[str] = set()
    while not wanted <= heard:
        left = start + ANNOUNCED_WITHIN - loop.time()
        if left <= 0:
            break
        changed = await feed.wait(left)
        if changed is None:
            raise ConformanceFailure(
                f"after {what}, ChangeFeed.wait returned None (announcements lost) with the server up"
            )
        heard |= changed
    expect(
        wanted <= heard,
        f"the change feed did not announce {what} ({sorted(wanted - heard)}) within "
        f"{ANNOUNCED_WITHIN * 1000:g} ms (it announced {sorted(heard)})",
    )


async def _open_feed(storage: DurableExecutionStorage) -> ChangeFeed | None:
    feed = storage.change_feed()
    expect(
        feed is None or isinstance(feed, ChangeFeed),
        f"change_feed() returned {type(feed).__name__}, expected a ChangeFeed or None",
    )
    return feed


@check("feed.announces_writes")
async def _announces_writes(s: Subject) -> None:
    """Another instance's head and journal writes are announced within 100 ms, and readable then.

    Without a feed (watchers poll), what another instance wrote is visible to the next read.
    """
    storage = s.storage
    feed = await _open_feed(storage)
    writer = await s.writer()
    if feed is None:  # watchers poll: what another instance wrote is visible to the next read
        first = head("exec-w")
        await writer.save_state_async(first)
        expect_equal(await storage.load_state_async("exec-w"), first, "head written by another instance")
        for seq in range(3):
            expect_equal(await _seqs_after(storage, "exec-w", seq - 1), [], f"tail after seq {seq - 1}")
            await writer.append_step_async(head("exec-w", seq + 1), step("exec-w", seq))
            tail = await _seqs_after(storage, "exec-w", seq - 1)
            expect_equal(tail, [seq], f"tail after seq {seq - 1} once another instance appended seq {seq}")
        return
    async with feed:
        await create(storage, "exec-setup", steps=1)
        await _drain(feed)
        first = head("exec-w")
        await writer.save_state_async(first)
        await _announced(feed, "exec-w", "save_state of a new execution by another instance")
        expect_equal(await storage.load_state_async("exec-w"), first, "head once announced")
        await writer.append_step_async(head("exec-w", 1), step("exec-w", 0))
        await _announced(feed, "exec-w", "append_step by another instance")
        expect_equal(await _seqs_after(storage, "exec-w", -1), [0], "tail once the append was announced")
        await writer.append_steps_async(head("exec-w", 4), batch("exec-w", 1, 3))
        await _announced(feed, "exec-w", "append_steps by another instance")
        expect_equal(await _seqs_after(storage, "exec-w", 0), [1, 2, 3], "tail once the batch was announced")
        await writer.save_state_async(head("exec-w", 4, step_name="done"))
        await _announced(feed, "exec-w", "save_state of an existing execution")
        await _drain(feed)
        leased = await writer.acquire_lease_async("exec-w", "worker-1", 30)
        expect(leased.lease_owner == "worker-1", "acquire_lease_async did not return the lease")
        await writer.save_state_async(head("exec-w", 4, lease_owner="worker-1"))
        await _announced(feed, "exec-w", "save_state of a running attempt")
        await writer.release_lease_async("exec-w", "worker-1")


@check("feed.announces_deletes")
async def _announces_deletes(s: Subject) -> None:
    """delete_state and cleanup deletes are announced within 100 ms; reads then see nothing.

    Without a feed (watchers poll), a delete by another instance is visible to the next read.
    """
    storage = s.storage
    writer = await s.writer()
    for name in ("exec-d", "exec-c1", "exec-c2"):
        await create(storage, name, steps=2)
    feed = await _open_feed(storage)
    if feed is None:
        await writer.delete_state_async("exec-d")
        expect_equal(await storage.load_state_async("exec-d"), None, "head deleted by another instance")
        expect_equal(await _seqs_after(storage, "exec-d", 0), [], "tail of an execution deleted elsewhere")
        return
    async with feed:
        await _drain(feed)
        await writer.delete_state_async("exec-d")
        await _announced(feed, "exec-d", "delete_state by another instance")
        expect_equal(await storage.load_state_async("exec-d"), None, "head once the delete was announced")
        expect_equal(await _seqs_after(storage, "exec-d", -1), [], "journal once the delete was announced")
        expect_equal(await writer.cleanup_old_executions_async(0), 2, "cleanup_old_executions_async(0)")
        await _announced(feed, {"exec-c1", "exec-c2"}, "the deletes of cleanup_old_executions")


@check("feed.isolated")
async def _isolated(s: Subject) -> None:
    """Two stores (other prefix, directory, database) never see or announce each other's changes."""
    storage = s.storage
    other = await s.fresh()
    feed = await _open_feed(storage)
    await create(storage, "exec-first")
    if feed is None:
        await create(other, "exec-other", steps=1)
        expect_equal(await storage.load_state_async("exec-other"), None, "another store's execution")
        expect_equal(await _seqs_after(storage, "exec-other", -1), [], "another store's journal")
        return
    async with feed:
        await _drain(feed)
        await create(other, "exec-other", steps=2)
        await other.delete_state_async("exec-other")
        loop = asyncio.get_running_loop()
        until, heard = loop.time() + QUIET_FOR, set[str]()
        while (left := until - loop.time()) > 0:
            heard |= await feed.wait(left) or set()
        expect(not heard, f"the change feed announced {sorted(heard)}, written to another store")
        await create(storage, "exec-mine")
        await _announced(feed, "exec-mine", "save_state after another store's writes")
