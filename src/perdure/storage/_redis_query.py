"""The list queries (`ExecutionQuery` pages, counts, activity) on the Redis backend's indexes.

Redis keeps no per-field index beyond the `updated_at` sorted sets (`idx:all`, `idx:status:<s>`), so:

- a page walks the index newest first (`idx:all`, or the status index of each wanted status, merged
  by score), from the cursor, in batches of `BATCH` ids, reading and decoding the heads of each
  batch and keeping those that pass every filter (`ExecutionQuery.matches`), until `limit + 1`
  match. Without a name, a search or a `created_at` window, a page reads `limit + 1` ids and heads;
  with them, the walk reads as many heads as it takes to find a page (bounded by the index size,
  and by `since`: `created_at >= since` implies `updated_at >= since`, so the walk stops there).
- a count of statuses only is `ZCARD`s (through `get_stats_async`); any other filter walks the index.
- activity counts failed executions per bucket with `ZCOUNT` on `idx:status:failed` and started ones
  by decoding the heads updated since `since` (an execution created since then was updated since).

The walk pages by score rather than by rank: each batch asks for scores up to the last one seen
(`ZREVRANGEBYSCORE ... LIMIT k n`, `k` the ids of that score already seen), so a deep walk costs
O(log N + batch) per round trip, not O(rank).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from ..records import ExecutionRecord, ExecutionStatus
from ._query import (
    ActivityBucket,
    ExecutionPage,
    ExecutionQuery,
    activity_of,
    buckets_from,
    encode_cursor,
    micros,
)
from ._redis_scripts import STATUSES

if TYPE_CHECKING:
    from .redis import RedisDurableStorage

__all__ = ["activity", "count", "page"]

BATCH = 256


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _walk(
    store: RedisDurableStorage, key: str, after: tuple[int, str] | None, floor: int | None
) -> AsyncIterator[tuple[int, str]]:
    """`(score, id)` of sorted set `key`, highest first, strictly after `after`, scores >= `floor`."""
    top = "+inf" if after is None else str(after[0])
    bottom = "-inf" if floor is None else str(floor)
    skip = 0  # ids of score `top` already seen (they come first among that score)
    while True:
        offset, count = skip, BATCH

        async def read(client: Any, top: str = top, offset: int = offset, count: int = count) -> Any:
            return await client.zrevrangebyscore(key, top, bottom, start=offset, num=count, withscores=True)

        batch = cast(list[tuple[bytes, float]], await store._call(read, None))
        for member, raw_score in batch:
            score, execution_id = int(raw_score), _text(member)
            if after is not None and score == after[0] and execution_id >= after[1]:
                continue
            yield score, execution_id
        if len(batch) < count:
            return
        last = int(batch[-1][1])
        same = sum(1 for _, s in batch if int(s) == last)
        skip = skip + same if str(last) == top else same
        top = str(last)


async def _merged(
    store: RedisDurableStorage, keys: Sequence[str], after: tuple[int, str] | None, floor: int | None
) -> AsyncIterator[tuple[int, str]]:
    """The walks of several indexes merged, highest `(score, id)` first (each id is in one index)."""
    walks = [_walk(store, key, after, floor) for key in keys]
    current: list[tuple[int, str] | None] = [await anext(w, None) for w in walks]
    while True:
        live = [(item, i) for i, item in enumerate(current) if item is not None]
        if not live:
            return
        item, index = max(live)
        yield item
        current[index] = await anext(walks[index], None)


def _keys(store: RedisDurableStorage, query: ExecutionQuery) -> list[str]:
    if query.statuses is None:
        return [store._keys.all]
    return [store._keys.status(s) for s in sorted(query.statuses)]


def _only_statuses(query: ExecutionQuery) -> bool:
    return query.name is None and query.search is None and query.since is None and query.until is None


async def _heads(store: RedisDurableStorage, ids: Sequence[str]) -> list[ExecutionRecord]:
    """Decoded heads of `ids` in order; damaged ones skipped, expired ones forgotten."""
    found, gone = [], []
    for eid, (head, lease) in zip(ids, await store._fetch(ids), strict=True):
        if head[1] is None:
            gone.append(eid)
        else:
            found.append((eid, head, lease))
    if gone:
        await store._forget(gone)
    return store._readable_heads(found, lambda row: store._decode(*row))


async def _matching(
    store: RedisDurableStorage, query: ExecutionQuery, want: int | None
) -> AsyncGenerator[ExecutionRecord, None]:
    """Heads that pass `query`'s filters, newest first from its cursor; reads batches of ids."""
    after = query.after
    mark = None if after is None else (micros(after[0]), after[1])
    floor = None if query.since is None else micros(query.since)
    size = BATCH if want is None or not _only_statuses(query) else min(want, BATCH)
    pending: list[str] = []

    async def flush() -> list[ExecutionRecord]:
        heads = [h for h in await _heads(store, pending) if query.matches(h)]
        pending.clear()
        return heads

    async for _, execution_id in _merged(store, _keys(store, query), mark, floor):
        pending.append(execution_id)
        if len(pending) >= size:
            for head in await flush():
                yield head
    if pending:
        for head in await flush():
            yield head


async def page(store: RedisDurableStorage, query: ExecutionQuery) -> ExecutionPage:
    """One page of `query` (see the module doc)."""
    items: list[ExecutionRecord] = []
    more = False
    walk = _matching(store, query, query.limit + 1)
    async for head in walk:
        if len(items) == query.limit:
            more = True
            break
        items.append(head)
    await walk.aclose()
    cursor = encode_cursor(items[-1].updated_at, items[-1].execution_id) if more else None
    return ExecutionPage(items, cursor)


async def count(store: RedisDurableStorage, query: ExecutionQuery) -> int:
    """`ZCARD`s for statuses alone; otherwise a walk of the index (see the module doc)."""
    if _only_statuses(query):
        by_status = (await store.get_stats_async())["by_status"]
        wanted = STATUSES if query.statuses is None else sorted(query.statuses)
        return sum(int(by_status.get(s, 0)) for s in wanted)
    total = 0
    async for _ in _matching(store, query, None):
        total += 1
    return total


async def activity(store: RedisDurableStorage, bounds: Sequence[datetime]) -> list[ActivityBucket]:
    """Started per bucket from the heads updated since `bounds[0]`; failed by `ZCOUNT`s."""
    floor = micros(bounds[0])
    heads: list[ExecutionRecord] = []
    pending: list[str] = []
    async for _, execution_id in _walk(store, store._keys.all, None, floor):
        pending.append(execution_id)
        if len(pending) >= BATCH:
            heads.extend(await _heads(store, pending))
            pending.clear()
    if pending:
        heads.extend(await _heads(store, pending))
    started = [b.started for b in activity_of(heads, bounds)]
    key = store._keys.status(ExecutionStatus.FAILED.value)
    failed = []
    for low, high in itertools.pairwise(bounds):

        async def zcount(client: Any, low: datetime = low, high: datetime = high) -> Any:
            return await client.zcount(key, micros(low), f"({micros(high)}")

        failed.append(int(await store._call(zcount, None)))
    return buckets_from(bounds, started, failed)
