"""The list queries of the storage contract: filters, keyset pages, counts, activity, cancel requests.

`ExecutionQuery` is what an operator's list asks for (statuses, exact agent or workflow name, a
`created_at` window, a case-insensitive text search, a page size and an opaque cursor);
`ExecutionPage` is one page of it, newest `updated_at` first (ties: `execution_id` descending). The
cursor encodes the last row's `(updated_at, execution_id)`: the next page starts strictly after it
(keyset pagination), so executions created while an operator pages never shift the pages; an
execution *updated* meanwhile moves to the first page and may be missed or seen twice, as in any
keyset listing. `ActivityBucket` counts executions started and failed per time bucket; a
`CancelRequest` is what an operator's cooperative cancel leaves for the worker that runs the
execution.

The helpers here are the reference semantics: the contract's default implementations (memory and
file backends, custom backends) filter and page decoded heads with them, and the indexed backends
(SQLite, PostgreSQL, Redis) must give the same answers (the conformance kit checks it).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import UserError
from ..records import ExecutionRecord, ExecutionStatus, utcnow

__all__ = [
    "MAX_BUCKETS",
    "MAX_LIMIT",
    "ActivityBucket",
    "CancelRequest",
    "ExecutionPage",
    "ExecutionQuery",
    "activity_bounds",
    "activity_of",
    "decode_cursor",
    "encode_cursor",
    "execution_name",
    "page_of",
    "search_text",
]

MAX_LIMIT = 1000
"""The largest page `ExecutionQuery.limit` allows."""

MAX_BUCKETS = 10_000
"""The most buckets one `activity_async` call returns (a longer span or a smaller bucket is `UserError`)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_CURSOR_PREFIX = "c1."
_SEPARATOR = "\x1f"
"""Between the fields of `search_text` (unit separator), so that a search rarely spans two fields."""


def _utc(moment: datetime, what: str) -> datetime:
    if not isinstance(moment, datetime):
        raise UserError(f"{what} must be a datetime, got {moment!r}.")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def micros(moment: datetime) -> int:
    """Exact epoch microseconds of an aware (or naive = UTC) datetime."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICRO


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def execution_name(head: ExecutionRecord) -> str | None:
    """The name an operator filters by: the workflow's registered name, else the agent's name."""
    return head.task.workflow or head.task.agent_name or None


def fold(text: str) -> str:
    """Case-folded text, as both the stored search text and the searched string are compared."""
    return text.casefold()


def search_text(head: ExecutionRecord) -> str:
    """What `ExecutionQuery.search` looks in: execution id, name and error (type and message), folded."""
    error = f"{head.error.type}: {head.error.message}" if head.error is not None else ""
    return fold(_SEPARATOR.join((head.execution_id, execution_name(head) or "", error)))


def encode_cursor(updated_at: datetime, execution_id: str) -> str:
    """The opaque cursor of a page that ends with this row."""
    raw = f"{micros(updated_at)}:{execution_id}".encode()
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """`(updated_at, execution_id)` of a cursor from `ExecutionPage.next_cursor`; `UserError` otherwise."""
    bad = UserError(
        f"ExecutionQuery.cursor {cursor!r} is not a cursor of this API: pass the next_cursor of the "
        f"previous ExecutionPage unchanged, or None for the first page."
    )
    if not isinstance(cursor, str) or not cursor.startswith(_CURSOR_PREFIX):
        raise bad
    body = cursor[len(_CURSOR_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        stamp, _, execution_id = raw.partition(":")
        moment = from_micros(int(stamp))
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise bad from None
    if not execution_id:
        raise bad
    return moment, execution_id


@dataclass(frozen=True)
class ExecutionQuery:
    """Which executions a list page shows; every field is optional and they combine with AND.

    - `statuses`: executions in one of these statuses (names or `ExecutionStatus`; None: any; an
      empty set is taken as None).
    - `name`: exact agent or workflow name (`head.task.workflow or head.task.agent_name`).
    - `since` / `until`: `created_at` >= `since` and < `until` (naive datetimes are UTC).
    - `search`: case-insensitive substring of the execution id, the name, or the error (type and
      message); an empty string is taken as None.
    - `limit`: page size, 1..1000 (default 50).
    - `cursor`: `next_cursor` of the previous page (opaque), None for the first page.

    Invalid values raise `perdure.errors.UserError` naming the field, when the query is built.
    Next page: `dataclasses.replace(query, cursor=page.next_cursor)`.
    """

    statuses: frozenset[str] | None = None
    name: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    search: str | None = None
    limit: int = 50
    cursor: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        statuses = self.statuses
        if statuses is not None:
            values = [statuses] if isinstance(statuses, str) else statuses
            try:
                normalized = frozenset(ExecutionStatus(value).value for value in values)
            except (TypeError, ValueError):
                known = ", ".join(s.value for s in ExecutionStatus)
                raise UserError(
                    f"ExecutionQuery.statuses must be statuses among {known}, got {statuses!r}."
                ) from None
            set_(self, "statuses", normalized or None)
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise UserError(f"ExecutionQuery.name must be a non-empty string or None, got {self.name!r}.")
        if self.since is not None:
            set_(self, "since", _utc(self.since, "ExecutionQuery.since"))
        if self.until is not None:
            set_(self, "until", _utc(self.until, "ExecutionQuery.until"))
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise UserError(
                f"ExecutionQuery.until ({self.until.isoformat()}) must be after since "
                f"({self.since.isoformat()})."
            )
        if self.search is not None:
            if not isinstance(self.search, str):
                raise UserError(f"ExecutionQuery.search must be a string or None, got {self.search!r}.")
            if not self.search:
                set_(self, "search", None)
        limit = self.limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise UserError(f"ExecutionQuery.limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}.")
        if self.cursor is not None:
            decode_cursor(self.cursor)

    @property
    def after(self) -> tuple[datetime, str] | None:
        """The `(updated_at, execution_id)` the page starts after (decoded cursor), None for the first."""
        return None if self.cursor is None else decode_cursor(self.cursor)

    @property
    def folded_search(self) -> str | None:
        """`search` as the stored search text is compared with it (case-folded)."""
        return None if self.search is None else fold(self.search)

    def matches(self, head: ExecutionRecord) -> bool:
        """Whether `head` passes every filter (not the cursor, not the limit)."""
        if self.statuses is not None and head.status.value not in self.statuses:
            return False
        if self.name is not None and execution_name(head) != self.name:
            return False
        created = _utc(head.created_at, "created_at")
        if self.since is not None and created < self.since:
            return False
        if self.until is not None and created >= self.until:
            return False
        folded = self.folded_search
        return folded is None or folded in search_text(head)


@dataclass(frozen=True)
class ExecutionPage:
    """One page of `query_executions_async`: its heads, and the cursor of the next page.

    `next_cursor` is None on the last page. A page holds `limit` heads unless it is the last, or
    unless damaged heads were among its rows (they are skipped with a warning, as in listings).
    """

    items: list[ExecutionRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class ActivityBucket:
    """Executions created in [`start`, `start` + bucket) (`started`), and failed ones last updated then."""

    start: datetime
    started: int
    failed: int


@dataclass(frozen=True)
class CancelRequest:
    """An operator asked to cancel an execution: when (UTC) and why (may be empty)."""

    requested_at: datetime
    reason: str = ""


def _sort_key(head: ExecutionRecord) -> tuple[int, str]:
    return micros(head.updated_at), head.execution_id


def page_of(heads: Iterable[ExecutionRecord], query: ExecutionQuery) -> ExecutionPage:
    """The page of `query` over `heads` (decoded heads; what the scanning backends answer with)."""
    matching = sorted((h for h in heads if query.matches(h)), key=_sort_key, reverse=True)
    after = query.after
    if after is not None:
        mark = (micros(after[0]), after[1])
        matching = [h for h in matching if _sort_key(h) < mark]
    items = matching[: query.limit]
    more = len(matching) > query.limit
    last = items[-1] if more else None
    return ExecutionPage(items, encode_cursor(last.updated_at, last.execution_id) if last else None)


def activity_bounds(since: datetime, bucket_seconds: int, now: datetime | None = None) -> list[datetime]:
    """The bucket starts of an `activity_async` call, plus the end of the last bucket, oldest first.

    Bucket k covers [since + k * bucket, since + (k + 1) * bucket); the last one contains now. A
    `since` in the future gives no bucket. Arguments are checked (`UserError` naming them).
    """
    since = _utc(since, "activity since")
    if isinstance(bucket_seconds, bool) or not isinstance(bucket_seconds, int) or bucket_seconds < 1:
        raise UserError(f"activity bucket_seconds must be an integer >= 1, got {bucket_seconds!r}.")
    now = now or utcnow()
    span = (now - since).total_seconds()
    if span < 0:
        return []
    count = max(1, math.floor(span / bucket_seconds) + 1)
    if count > MAX_BUCKETS:
        raise UserError(
            f"activity since {since.isoformat()} with bucket_seconds={bucket_seconds} makes {count} buckets; "
            f"at most {MAX_BUCKETS}: use a later since or larger buckets."
        )
    step = timedelta(seconds=bucket_seconds)
    return [since + step * k for k in range(count + 1)]


def buckets_from(
    bounds: Sequence[datetime], started: Sequence[int], failed: Sequence[int]
) -> list[ActivityBucket]:
    return [
        ActivityBucket(start, int(s), int(f))
        for start, s, f in zip(bounds[:-1], started, failed, strict=True)
    ]


def activity_of(heads: Iterable[ExecutionRecord], bounds: Sequence[datetime]) -> list[ActivityBucket]:
    """Count decoded heads into the buckets `bounds` describes (see `activity_bounds`)."""
    if len(bounds) < 2:
        return []
    started, failed = [0] * (len(bounds) - 1), [0] * (len(bounds) - 1)
    marks = [micros(b) for b in bounds]

    def index(moment: datetime) -> int | None:
        position = bisect.bisect_right(marks, micros(moment)) - 1
        return position if 0 <= position < len(started) else None

    for head in heads:
        k = index(head.created_at)
        if k is not None:
            started[k] += 1
        if head.status is ExecutionStatus.FAILED:
            k = index(head.updated_at)
            if k is not None:
                failed[k] += 1
    return buckets_from(bounds, started, failed)


def check_reason(reason: Any) -> str:
    if not isinstance(reason, str):
        raise UserError(f"request_cancel reason must be a string, got {reason!r}.")
    return reason
