"""The dashboard's reads of a storage, each through one small function (the storage adapter).

The list page is one `query_executions_async` page (keyset cursor), its `count_executions_async` total,
the status counts of `get_stats_async` and the hourly `activity_async` buckets: SQLite and
PostgreSQL answer each from indexes, so the page costs the same with 100 or 100,000 executions.
Keeping every read the pages make in this module means a change of the storage API is a change of
this file only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..records import ExecutionRecord, ExecutionStatus, StepRecord, utcnow
from ..storage import DurableExecutionStorage, ExecutionQuery

__all__ = [
    "PAGE_SIZE",
    "ActivityPoint",
    "ListPage",
    "activity",
    "counts",
    "is_running",
    "list_page",
    "load_execution",
]

PAGE_SIZE = 50


@dataclass
class ListPage:
    """One page of the executions table."""

    items: list[ExecutionRecord]
    next_cursor: str | None
    total: int | None
    """How many executions match the filters (every page); None when not counted."""


@dataclass
class ActivityPoint:
    """Executions started and failed in one hour."""

    start: datetime
    started: int = 0
    failed: int = 0


def is_running(head: ExecutionRecord, now: datetime | None = None) -> bool:
    """Whether a worker holds the execution's lease now (a `success` head without one is interrupted)."""
    expires = head.lease_expires_at
    return bool(head.lease_owner) and expires is not None and expires > (now or utcnow())


async def list_page(
    storage: DurableExecutionStorage,
    *,
    status: ExecutionStatus | None,
    search: str,
    name: str = "",
    cursor: str | None,
    limit: int = PAGE_SIZE,
    count: bool = True,
) -> ListPage:
    """The executions matching `status`, `name` and `search` (in id, name, error), newest update first.

    `count=False` leaves `total` None (a caller that knows it from `counts`: no name or search filter).
    A cursor that is not one of this API's (edited by hand) raises `UserError`.
    """
    query = ExecutionQuery(
        statuses=frozenset({status.value}) if status is not None else None,
        name=name or None,
        search=search or None,
        limit=limit,
        cursor=cursor or None,
    )
    if not count:
        page, total = await storage.query_executions_async(query), None
    else:
        page, total = await asyncio.gather(
            storage.query_executions_async(query), storage.count_executions_async(query)
        )
    return ListPage(list(page.items), page.next_cursor, total)


async def counts(storage: DurableExecutionStorage) -> tuple[int, dict[str, int]]:
    """The total and the executions of each status."""
    stats = await storage.get_stats_async()
    by_status = {str(k): int(v) for k, v in stats.get("by_status", {}).items()}
    return int(stats.get("total_executions", sum(by_status.values()))), by_status


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


async def activity(
    storage: DurableExecutionStorage, now: datetime | None = None, hours: int = 24
) -> list[ActivityPoint]:
    """Executions started (created) and failed per hour over the last `hours` hours, oldest first."""
    end = _hour(now or utcnow()) + timedelta(hours=1)
    since = end - timedelta(hours=hours)
    points = [ActivityPoint(since + timedelta(hours=i)) for i in range(hours)]
    for bucket in await storage.activity_async(since, 3600):
        index = int((bucket.start.astimezone(UTC) - since).total_seconds() // 3600)
        if 0 <= index < hours:
            points[index].started += int(bucket.started)
            points[index].failed += int(bucket.failed)
    return points


async def load_execution(
    storage: DurableExecutionStorage, execution_id: str
) -> tuple[ExecutionRecord | None, list[StepRecord]]:
    """The head and the whole journal of one execution (None and [] when it does not exist)."""
    head = await storage.load_state_async(execution_id)
    if head is None:
        return None, []
    return head, await storage.load_steps_async(execution_id)
