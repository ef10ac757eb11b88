"""The operator's list over 100,000 executions: `query_executions`, `count_executions`, `activity`.

Run it with ``.venv/bin/python benchmarks/list_100k.py`` (``--count 20000`` for a quick look,
``--backends sqlite,postgres``). Without ``--postgres-dsn`` it starts a throw-away PostgreSQL on
127.0.0.1 with the test suite's launch helper (``tests/support/server_postgres.py``).

Load: ``--count`` executions created over the last two days (statuses mixed: 1 in 10 failed with an
error message, names among 20 agents and 5 workflows), written fast with the backend's own head
rows (SQLite ``executemany`` in one transaction, PostgreSQL ``COPY``; the rows carry the list
columns the storage fills on every write; SQLite's search index is filled by its triggers). Then
``ANALYZE`` (SQLite) or ``VACUUM ANALYZE`` (PostgreSQL: rows loaded by ``COPY`` have no statistics
and no visibility map until autovacuum gets to them, which a live database has long done; without
it index-only scans read the table).

Timed (median of ``--repeat`` runs, milliseconds, server round trip included): the first page (50)
unfiltered, filtered by status (``failed``), by two statuses, by name, by search text (an error
word, and a rare id fragment), the 100th page via the cursor (the cursors of pages 1..99 are
walked first, untimed), ``count`` unfiltered and by status, and ``activity`` over the last day in
hourly buckets. Each row says whether it meets the dashboard's goal, < 300 ms for a list page.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (ROOT / "src", ROOT / "tests", HERE):
    if _path.is_dir() and str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from perdure.codec import encode_head  # noqa: E402
from perdure.records import ErrorInfo, ExecutionRecord, ExecutionStatus, TaskSnapshot, utcnow  # noqa: E402
from perdure.storage import DurableExecutionStorage, ExecutionQuery  # noqa: E402
from perdure.storage._query import execution_name, search_text  # noqa: E402

GOAL_MS = 300.0
_STATUSES = [ExecutionStatus.COMPLETED] * 6 + [ExecutionStatus.SUCCESS, ExecutionStatus.PAUSED]
_STATUSES += [ExecutionStatus.CANCELLED, ExecutionStatus.FAILED]


def records(count: int) -> Iterator[ExecutionRecord]:
    rng = random.Random(7)
    now = utcnow()
    for index in range(count):
        created = now - timedelta(seconds=rng.uniform(0, 2 * 86400))
        status = _STATUSES[index % len(_STATUSES)]
        workflow = f"workflow-{index % 5}" if index % 4 == 0 else None
        error = None
        if status is ExecutionStatus.FAILED:
            error = ErrorInfo(type="httpx.ReadTimeout", message=f"upstream timed out after {index % 60} s")
        yield ExecutionRecord(
            execution_id=f"{created:%Y%m%d%H%M%S}-{index:08x}",
            status=status,
            created_at=created,
            updated_at=created + timedelta(seconds=rng.uniform(0, 600)),
            task=TaskSnapshot(agent_name=f"agent-{index % 20}", workflow=workflow),
            error=error,
        )


def load_sqlite(path: str, count: int) -> DurableExecutionStorage:
    from perdure.storage import SQLiteDurableStorage

    store = SQLiteDurableStorage(path, synchronous="NORMAL")
    store._ready(create=True)
    rows = [store._head_row(r) for r in records(count)]
    with store._pool.connection() as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(store._sql_upsert_head, rows)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    return store


async def load_postgres(dsn: str, count: int) -> DurableExecutionStorage:
    import psycopg

    from perdure.storage.postgres import PostgresDurableStorage

    prefix = f"bench{os.urandom(3).hex()}_"
    store = PostgresDurableStorage(dsn, table_prefix=prefix)
    await store.get_stats_async()  # creates the tables
    cols = "execution_id, status, updated_at, created_at, codec, payload, name, search"
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY {prefix}heads ({cols}) FROM STDIN") as copy:
            for r in records(count):
                codec, payload = store.codec.encode(encode_head(r))
                row = (r.execution_id, r.status.value, r.updated_at, r.created_at, codec, payload)
                copy.write_row((*row, execution_name(r), search_text(r)))
        conn.execute(f"VACUUM ANALYZE {prefix}heads")
    return store


async def timed(action: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, Any]:
    await action()  # warm-up
    samples, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = await action()
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples), result


async def measure(store: DurableExecutionStorage, repeat: int) -> list[tuple[str, float, str]]:
    page100 = ExecutionQuery()
    for _ in range(99):
        page = await store.query_executions_async(page100)
        page100 = dataclasses.replace(page100, cursor=page.next_cursor)
    since = utcnow() - timedelta(days=1)
    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("page 1, no filter", lambda: store.query_executions_async(ExecutionQuery())),
        (
            "page 1, status=failed",
            lambda: store.query_executions_async(ExecutionQuery(statuses=frozenset({"failed"}))),
        ),
        (
            "page 1, status in {failed, paused}",
            lambda: store.query_executions_async(ExecutionQuery(statuses=frozenset({"failed", "paused"}))),
        ),
        ("page 1, name=agent-7", lambda: store.query_executions_async(ExecutionQuery(name="agent-7"))),
        (
            "page 1, search='timed out'",
            lambda: store.query_executions_async(ExecutionQuery(search="timed out")),
        ),
        (
            "page 1, search='0001ff' (rare)",
            lambda: store.query_executions_async(ExecutionQuery(search="0001ff")),
        ),
        ("page 1, since=1 day", lambda: store.query_executions_async(ExecutionQuery(since=since))),
        ("page 100 via cursor", lambda: store.query_executions_async(page100)),
        ("count, no filter", lambda: store.count_executions_async(ExecutionQuery())),
        (
            "count, status=failed",
            lambda: store.count_executions_async(ExecutionQuery(statuses=frozenset({"failed"}))),
        ),
        (
            "count, search='timed out'",
            lambda: store.count_executions_async(ExecutionQuery(search="timed out")),
        ),
        (
            "count, search='0001ff' (rare)",
            lambda: store.count_executions_async(ExecutionQuery(search="0001ff")),
        ),
        ("activity, last day, hourly", lambda: store.activity_async(since, 3600)),
    ]
    rows = []
    for name, action in cases:
        ms, result = await timed(action, repeat)
        size = (
            len(result.items)
            if hasattr(result, "items")
            else (len(result) if isinstance(result, list) else result)
        )
        rows.append((name, ms, str(size)))
    return rows


@contextlib.contextmanager
def postgres_dsn(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    from support.server_postgres import _remove, _start_server

    server = _start_server()
    try:
        yield server.dsn
    finally:
        _remove(server)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres-dsn", default=None)
    args = parser.parse_args()
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    results: dict[str, list[tuple[str, float, str]]] = {}
    if "sqlite" in wanted:
        work = tempfile.mkdtemp(prefix="perdure-list-")
        try:
            began = time.perf_counter()
            store = load_sqlite(str(Path(work) / "list.db"), args.count)
            print(
                f"sqlite: loaded {args.count} executions in {time.perf_counter() - began:.1f} s", flush=True
            )
            results["sqlite"] = await measure(store, args.repeat)
            store.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if "postgres" in wanted:
        with postgres_dsn(args.postgres_dsn) as dsn:
            began = time.perf_counter()
            pg = await load_postgres(dsn, args.count)
            print(
                f"postgres: loaded {args.count} executions in {time.perf_counter() - began:.1f} s", flush=True
            )
            results["postgres"] = await measure(pg, args.repeat)
            await pg.close_async()
    print(f"\n{args.count} executions, median of {args.repeat} runs (ms); goal < {GOAL_MS:.0f} ms\n")
    backends = list(results)
    header = f"{'query':36}" + "".join(f"{b:>22}" for b in backends)
    print(header)
    print("-" * len(header))
    for index, (name, _, _) in enumerate(next(iter(results.values()))):
        cells = ""
        for backend in backends:
            _, ms, size = results[backend][index]
            mark = "ok" if ms < GOAL_MS else "SLOW"
            cells += f"{ms:>10.1f} {mark:>4} ({size:>5})"
        print(f"{name:36}{cells}")


if __name__ == "__main__":
    asyncio.run(main())
