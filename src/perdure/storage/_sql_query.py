"""The list queries (`ExecutionQuery` pages, counts, activity) as SQL, for SQLite and PostgreSQL.

Both SQL backends keep, next to each head, the columns these queries filter on: `status`,
`created_at`, `updated_at`, `name` (the agent or workflow name) and `search` (the case-folded
execution id, name and error, `perdure.storage._query.search_text`), filled on every head write.
A page is one statement that reads an index newest first and stops after `limit + 1` rows:

- no filter: `(updated_at, execution_id)`; one status: `(status, updated_at, execution_id)`; a name:
  `(name, updated_at, execution_id)`. Several statuses: one such index range per status, each cut at
  `limit + 1`, merged (`UNION ALL`, then sorted and cut again): never a sort of every matching row.
- the cursor is a row-value comparison `(updated_at, execution_id) < (?, ?)` on the same index.
- `since` / `until` filter the rows the index yields; so does `search` (a substring test on
  `search`) when it is shorter than `MIN_INDEXED_SEARCH` characters or the backend has no search
  index. A longer search on a backend with a trigram index (PostgreSQL `pg_trgm`, SQLite FTS5
  `trigram`) also asks that index (`QuerySql.search_index`), so a rare text is found without
  reading every row; the substring test stays, so the answer is exactly the scan's.

Counts are `count(*)` over the same filters (index ranges where there is an index). Activity is the
backend's: one grouped statement on PostgreSQL (`Dialect.activity`), index range counts per bucket
on SQLite (the bucket bounds are one JSON parameter).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..records import ExecutionStatus
from ._query import ActivityBucket, ExecutionQuery, buckets_from

__all__ = ["MIN_INDEXED_SEARCH", "Dialect", "QuerySql", "like_pattern"]

MIN_INDEXED_SEARCH = 3
"""Shortest search a trigram index can answer (a shorter one has no trigram: the scan stays)."""

_ORDER = "ORDER BY updated_at DESC, execution_id DESC"


@dataclass(frozen=True)
class Dialect:
    """What differs between the two SQL backends in these statements."""

    param: str
    """The parameter placeholder (`?` or `%s`)."""
    contains: str
    """A test that column `search` contains the parameter, e.g. `instr(search, ?) > 0`."""
    stamp: Callable[[datetime], Any]
    """A timestamp as the backend's columns store it (fixed-width text for SQLite)."""
    activity: Callable[[str, Sequence[datetime], Callable[[datetime], Any]], tuple[str, list[Any]]]
    """The activity statement of a heads table (see `postgres_activity`, `sqlite_activity`)."""


def like_pattern(text: str) -> str:
    """`%text%` for `LIKE` with the default escape character (backslash): a literal substring."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def postgres_activity(
    table: str, bounds: Sequence[datetime], stamp: Callable[[datetime], Any]
) -> tuple[str, list[Any]]:
    """One grouped statement: bucket index `k` = whole buckets between `since` and the row's time.

    Started rows come from a `created_at` index range, failed ones from a `(status, updated_at)`
    range; `extract(epoch from interval)` is exact (numeric), so a row exactly on a bound falls in
    the bucket that starts there. Only non-empty buckets come back.
    """
    since, end = stamp(bounds[0]), stamp(bounds[-1])
    seconds = round((bounds[1] - bounds[0]).total_seconds())
    bucket = "div(extract(epoch FROM {col} - %s::timestamptz), %s)::integer"
    sql = (
        f"SELECT k, sum(s)::bigint, sum(f)::bigint FROM ("
        f"SELECT {bucket.format(col='created_at')} AS k, 1 AS s, 0 AS f FROM {table} "
        f"WHERE created_at >= %s AND created_at < %s "
        f"UNION ALL SELECT {bucket.format(col='updated_at')}, 0, 1 FROM {table} "
        f"WHERE status = %s AND updated_at >= %s AND updated_at < %s"
        f") AS q GROUP BY k"
    )
    failed = ExecutionStatus.FAILED.value
    return sql, [since, seconds, since, end, since, seconds, failed, since, end]


def sqlite_activity(
    table: str, bounds: Sequence[datetime], stamp: Callable[[datetime], Any]
) -> tuple[str, list[Any]]:
    """Two index range counts per bucket; the bounds are one JSON array (no per-bucket parameters).

    SQLite stores timestamps as fixed-width text, so a count between two bound strings is an index
    range, exact to the microsecond; `json_each` walks the bounds, `lo`/`hi` are consecutive ones.
    """
    sql = (
        f"WITH b AS (SELECT key AS k, value AS lo, lead(value) OVER (ORDER BY key) AS hi "
        f"FROM json_each(?)) SELECT k, "
        f"(SELECT count(*) FROM {table} WHERE created_at >= b.lo AND created_at < b.hi), "
        f"(SELECT count(*) FROM {table} WHERE status = ? AND updated_at >= b.lo AND updated_at < b.hi) "
        f"FROM b WHERE hi IS NOT NULL"
    )
    return sql, [json.dumps([stamp(b) for b in bounds]), ExecutionStatus.FAILED.value]


class QuerySql:
    """Statements of one heads table; `columns` are those the backend decodes a head from."""

    def __init__(self, table: str, columns: str, dialect: Dialect) -> None:
        self.table = table
        self.columns = columns
        self.d = dialect
        self.search_index: Callable[[str], tuple[str, list[Any]]] | None = None
        """`(clause, params)` that asks the search index for a folded text (None: no index)."""

    def _filters(self, query: ExecutionQuery, status: str | None) -> tuple[list[str], list[Any]]:
        p, clauses, params = self.d.param, [], []
        if status is not None:
            clauses.append(f"status = {p}")
            params.append(status)
        elif query.statuses is not None:
            clauses.append(f"status IN ({', '.join([p] * len(query.statuses))})")
            params.extend(sorted(query.statuses))
        if query.name is not None:
            clauses.append(f"name = {p}")
            params.append(query.name)
        if query.since is not None:
            clauses.append(f"created_at >= {p}")
            params.append(self.d.stamp(query.since))
        if query.until is not None:
            clauses.append(f"created_at < {p}")
            params.append(self.d.stamp(query.until))
        folded = query.folded_search
        if folded is not None:
            if self.search_index is not None and len(folded) >= MIN_INDEXED_SEARCH:
                clause, more = self.search_index(folded)
                clauses.append(clause)
                params.extend(more)
            clauses.append(self.d.contains)
            params.append(folded)
        return clauses, params

    def _one(self, query: ExecutionQuery, status: str | None) -> tuple[str, list[Any]]:
        clauses, params = self._filters(query, status)
        after = query.after
        if after is not None:
            clauses.append(f"(updated_at, execution_id) < ({self.d.param}, {self.d.param})")
            params.extend((self.d.stamp(after[0]), after[1]))
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        sql = f"SELECT {self.columns}, updated_at FROM {self.table} {where}{_ORDER} LIMIT {self.d.param}"
        return sql, [*params, query.limit + 1]

    def page(self, query: ExecutionQuery) -> tuple[str, list[Any]]:
        """Up to `limit + 1` rows `(*columns, updated_at)` of the page, newest first."""
        statuses = sorted(query.statuses) if query.statuses is not None else []
        if len(statuses) <= 1:
            return self._one(query, statuses[0] if statuses else None)
        parts, params = [], []
        for index, status in enumerate(statuses):
            sql, one = self._one(query, status)
            parts.append(f"SELECT * FROM ({sql}) AS q{index}")
            params.extend(one)
        merged = " UNION ALL ".join(parts)
        return f"{merged} {_ORDER} LIMIT {self.d.param}", [*params, query.limit + 1]

    def count(self, query: ExecutionQuery) -> tuple[str, list[Any]]:
        """`count(*)` of the rows `query`'s filters select."""
        clauses, params = self._filters(query, None)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return f"SELECT count(*) FROM {self.table}{where}", params

    def activity(self, bounds: Sequence[datetime]) -> tuple[str, list[Any]]:
        """Rows `(bucket index, started, failed)` of the buckets of `bounds` (a missing one is empty)."""
        return self.d.activity(self.table, bounds, self.d.stamp)

    @staticmethod
    def buckets(bounds: Sequence[datetime], rows: Sequence[Sequence[Any]]) -> list[ActivityBucket]:
        """`ActivityBucket`s from the activity statement's rows (missing buckets are empty)."""
        started, failed = [0] * (len(bounds) - 1), [0] * (len(bounds) - 1)
        for k, s, f in rows:
            if 0 <= int(k) < len(started):
                started[int(k)], failed[int(k)] = int(s), int(f)
        return buckets_from(bounds, started, failed)
