"""The server backends in one run: step overhead vs the raw client, list/stats at 100k, worker scaling.

Run it with ``.venv/bin/python benchmarks/backends.py`` (5-10 minutes on a shared 2-core machine,
mostly section 3) or ``--quick`` (under a minute, smaller counts, every section still runs).
Without ``--redis-url`` / ``--postgres-dsn`` it starts its own ``redis-server`` and PostgreSQL on
free 127.0.0.1 ports in temporary directories, with the launch helpers of the test suite
(``tests/support/server_redis.py``, ``tests/support/server_postgres.py``), and stops them at the end. With a
URL/DSN it works in tables and keys of its own (random prefixes) and drops them afterwards.
``--sections 1,3`` runs a subset.

Method
------
The machine is small and shared, so every figure with a goal is either a *ratio* against a baseline
measured in the same process, interleaved with it, or an absolute latency far below its goal.

1. **Per-step overhead.** perdure's write path is ``storage.append_step_async(head, step)``: one
   journal entry (a tool call whose result is ~200 bytes of JSON) plus the new head, atomically,
   fenced by the execution's lease. Records are built before timing; perdure encodes them itself
   (that is part of its cost), the baselines write the same bytes, pre-encoded. Each side has its
   own execution in the same keys/tables, created and leased through the API. Steps of the sides
   alternate one by one (A B C, then A C B, B A C, ...: all orders in turn, so each side follows
   each other side equally often), each timed on its own; per repetition the ratio is
   median(perdure) / median(baseline), and the table shows the median ratio and the min-max spread.

   * Redis, baseline A: the raw ``redis.asyncio`` client sends a MULTI/EXEC pipeline with the same
     keys and bytes (journal ``RPUSH``, head ``HSET c d s``, ``ZADD`` to ``idx:all`` and
     ``idx:status:success``). That is the least a hand-written client does for an atomic step; it
     does not check the lease fence or the journal sequence, which perdure's Lua script does, so
     this ratio includes the price of those checks.
   * Redis, baseline B: the raw client invokes perdure's own append script (``EVALSHA``, same
     KEYS/ARGV). The server does identical work, so this ratio is perdure's client-side cost only
     (encoding, argument building, error mapping).
   * PostgreSQL, baseline A: raw ``psycopg`` (autocommit connection, binary cursor) runs the
     backend's own append statement (a CTE: fenced head upsert + journal insert, one implicit
     transaction, one round trip) with the same parameters: perdure's client-side cost only
     (encoding, pool checkout, error mapping).
   * PostgreSQL, baseline B: raw ``psycopg`` runs the same INSERT (journal) and fenced UPSERT (head)
     as two statements inside ``conn.transaction()``: BEGIN, INSERT, UPSERT, COMMIT, four round trips,
     the plain way to write it by hand. perdure's single statement saves round trips, so this ratio
     can be below 1.
   * PostgreSQL runs once with ``synchronous_commit=on`` (the default: every commit waits for the WAL
     fsync; goals apply) and once with ``off`` (CPU and round trips only; reported), set per
     connection through the DSN's ``options`` for both sides.

2. **list/stats over 100,000 executions.** 100k heads with a realistic status mix (70% completed,
   12% success, 10% failed, 5% paused, 3% cancelled) and realistic bodies (task, usage, an error with
   a traceback for failed ones, an output for completed ones) are encoded once with ``perdure.codec``
   and bulk-loaded **directly into each backend's tables/keys**, bypassing the API for speed
   (SQLite ``executemany`` in one transaction, PostgreSQL ``COPY`` then ``VACUUM ANALYZE`` as
   autovacuum would do after such a load, Redis pipelines of ``HSET``/``ZADD``). The load is then
   verified through the API: ``get_stats_async`` must count exactly the loaded mix, the newest 50
   (and the newest 50 failed) must come back in order and equal the loaded records, and 25 random
   heads must load equal. Timed: ``get_stats_async()``, ``list_executions_async(limit=50)`` and
   ``list_executions_async(status="failed", limit=50)``, round-robin, median of several runs after
   warm-up. For the SQL backends the query plans are printed under the table.

3. **Worker throughput.** A short deterministic agent (``backends_app.py``: ``FunctionModel``, two tool
   calls, five journaled units) is really run 1,000 times on a source SQLite store, each run stopped
   by a simulated crash right before its second tool: head ``success``, lease released, a partial
   journal of three units. Those rows (the engine's bytes) are copied into a fresh namespace of each
   backend for each worker count, then N worker processes (N = 1, 2, 4) drain them. Each process
   runs ``Worker(storage, agent).run_async(once=True)``, which is what ``perdure worker --storage URL
   --app backends_app:agent --once`` runs, behind a start barrier: the processes import everything
   and connect, then all start on one signal, so the seconds of interpreter start-up (long and
   uneven when 4 processes start at once on 2 cores) stay out of the figure. Reported: executions
   per second from the signal to the last exit, the scaling factor vs 1 worker, the workers' CPU
   per execution and the machine's load. Verified: every execution ``completed`` with
   ``attempts == 2`` (one crash, one resume), five journal entries with unique keys, and the
   side-effect ledger shows each execution's side effect exactly once across all workers.

``--quick`` uses 20,000 heads, 40 executions, N = 1 and 2, and fewer repetitions.

Benchmarks are not tests: the exit code is 0 even when a goal is missed; the table says FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (ROOT / "src", ROOT / "tests", HERE):
    if _path.is_dir() and str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import backends_app  # noqa: E402
from perdure.codec import decode_head, encode_head, encode_step  # noqa: E402
from perdure.records import (  # noqa: E402
    ErrorInfo,
    ExecutionRecord,
    ExecutionStatus,
    PendingCall,
    PendingDecision,
    StepKind,
    StepRecord,
    TaskSnapshot,
    ToolRef,
    UsageTotals,
    utcnow,
)
from perdure.storage.base import DurableExecutionStorage  # noqa: E402
from perdure.storage.sqlite import SQLiteDurableStorage  # noqa: E402

STATUS_MIX = (
    (ExecutionStatus.COMPLETED, 0.70),
    (ExecutionStatus.SUCCESS, 0.12),
    (ExecutionStatus.FAILED, 0.10),
    (ExecutionStatus.PAUSED, 0.05),
    (ExecutionStatus.CANCELLED, 0.03),
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Settings:
    """Counts and repetitions; `--quick` shrinks them."""

    quick: bool
    step_reps: int
    step_count: int
    step_warmup: int
    heads: int
    query_runs: int
    executions: int
    worker_counts: tuple[int, ...]
    worker_timeout: float

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 3, 80, 10, 20_000, 5, 40, (1, 2), 300.0)
        return cls(False, 7, 300, 30, 100_000, 15, 1_000, (1, 2, 4), 900.0)


@dataclass
class Row:
    """One line of the result table."""

    key: str
    measure: str
    value: str
    goal: str
    verdict: str
    spread: str = ""
    detail: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Everything the run prints at the end."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    """`section: load average before -> after`, to show how busy the machine was."""

    def skip(self, key: str, measure: str, reason: str) -> None:
        """A row for a measurement that could not run."""
        self.rows.append(Row(key, measure, "n/a", "-", "SKIP", "", [reason]))


# ---- helpers -------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return statistics.median(values)


def spread(values: Sequence[float], unit: str = "x", digits: int = 2) -> str:
    """`min-max` of per-repetition values."""
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}{unit}" if len(values) > 1 else "1 rep"


def verdict(ok: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if ok else "FAIL"


def micros(moment: datetime) -> int:
    """Epoch microseconds: the score of the Redis `updated_at` indexes."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def sqlite_ts(moment: datetime) -> str:
    """The SQLite backend's timestamp column format (fixed-width UTC text)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_sqlite_ts(text: str) -> datetime:
    """Inverse of `sqlite_ts`."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def namespace() -> str:
    """A random identifier prefix for keys and tables, so a shared server is not disturbed."""
    return f"pb{uuid.uuid4().hex[:10]}"


def with_query(url: str, **params: str) -> str:
    """`url` with query parameters appended (the values must be URL-safe already)."""
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in params.items())


def progress(message: str) -> None:
    """Progress goes to stderr; the table to stdout."""
    print(message, file=sys.stderr, flush=True)


def load_average() -> str:
    """The machine's 1-minute load average, to say how busy it was (2 CPUs: above 2 means waiting)."""
    return f"{os.getloadavg()[0]:.1f}"


def payload_of_size(size: int, i: int = 0) -> dict[str, Any]:
    """A JSON object whose compact encoding is exactly `size` bytes (a tool's result)."""
    base = {"i": i, "status": "ok", "text": ""}
    overhead = len(json.dumps(base, separators=(",", ":")))
    return {**base, "text": "x" * max(size - overhead, 0)}


# ---- servers -------------------------------------------------------------------------------------


@dataclass
class Servers:
    """Where the server backends are, or why they are not available."""

    redis_url: str | None = None
    redis_note: str = ""
    postgres_dsn: str | None = None
    postgres_note: str = ""


@contextlib.contextmanager
def servers(redis_url: str | None, postgres_dsn: str | None, want: set[str]) -> Iterator[Servers]:
    """Use the given servers, or start throw-away ones the way the test fixtures do; stop them after."""
    found = Servers()
    with contextlib.ExitStack() as stack:
        if redis_url:
            found.redis_url, found.redis_note = redis_url, f"given: {redis_url}"
        elif "redis" in want:
            try:
                from support.server_redis import launch_redis

                directory = Path(tempfile.mkdtemp(prefix="perdure-bench-redis-"))
                stack.callback(shutil.rmtree, directory, True)
                server = launch_redis(directory)
                stack.callback(server.stop)
                found.redis_url = server.url
                found.redis_note = f"started here: redis-server on 127.0.0.1:{server.port}, no persistence"
            except Exception as exc:
                found.redis_note = f"redis-server could not be started: {type(exc).__name__}: {exc}"
        if postgres_dsn:
            found.postgres_dsn, found.postgres_note = postgres_dsn, "given: --postgres-dsn"
        elif "postgres" in want:
            try:
                from support.server_postgres import _remove, _start_server

                pg = _start_server()
                stack.callback(_remove, pg)
                found.postgres_dsn = pg.dsn
                found.postgres_note = (
                    f"started here: PostgreSQL ({pg.bindir.parent.name}) on 127.0.0.1:{pg.port}, fsync=on"
                )
            except Exception as exc:
                found.postgres_note = f"PostgreSQL could not be started: {type(exc).__name__}: {exc}"
        yield found


async def drop_redis_prefix(url: str, prefix: str) -> None:
    """Delete every key under `prefix` (used on servers given by URL, and to free memory)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


async def drop_postgres_prefix(dsn: str, prefix: str) -> None:
    """Drop the tables of a perdure table prefix."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for suffix in ("steps", "heads", "meta"):
            await conn.execute(f"DROP TABLE IF EXISTS {prefix}{suffix}")


# ---- 1. per-step overhead ------------------------------------------------------------------------


def step_records(
    execution_id: str, owner: str, count: int
) -> tuple[ExecutionRecord, list[tuple[ExecutionRecord, StepRecord]]]:
    """A leased head and `count` (head, step) pairs as the engine writes them for tool calls."""
    now = utcnow()
    head = ExecutionRecord(
        execution_id=execution_id,
        task=TaskSnapshot(
            description="Find the three cheapest flights to Lisbon next week and summarise them.",
            tools=[ToolRef(name="search_flights", ref="app.tools:search_flights")],
            model="openai:gpt-4o-mini",
            agent_name="travel",
        ),
        attempts=1,
        lease_owner=owner,
        lease_expires_at=now + timedelta(hours=1),
    )
    initial = head
    pairs: list[tuple[ExecutionRecord, StepRecord]] = []
    for seq in range(count):
        finished = now + timedelta(microseconds=997 * seq + 1)
        step = StepRecord(
            execution_id=execution_id,
            seq=seq,
            kind=StepKind.TOOL_CALL,
            name="tool:search_flights",
            key=f"tool:call_{uuid.uuid4().hex[:24]}",
            result=payload_of_size(200, seq),
            started_at=finished - timedelta(milliseconds=3),
            finished_at=finished,
        )
        head = head.model_copy(
            update={
                "status": ExecutionStatus.SUCCESS,
                "step_index": seq,
                "step_name": step.name,
                "updated_at": finished,
                "next_seq": seq + 1,
                "usage": UsageTotals(requests=seq // 2 + 1, input_tokens=180 * seq, tool_calls=seq + 1),
            }
        )
        pairs.append((head, step))
    return initial, pairs


StepOp = Callable[[int], Awaitable[None]]


async def interleave(sides: dict[str, StepOp], count: int, warmup: int) -> dict[str, list[float]]:
    """Run step i of every side, in an order that cycles through all permutations; time each step.

    All permutations (not just rotations) so that every side follows every other side equally
    often: a step can be slower right after another side's (e.g. right after a commit whose server
    process still uses the CPU), and rotations of three sides always put the same side after another.
    """
    names = list(sides)
    orders = list(itertools.permutations(names))
    times: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    for i in range(count):
        for name in orders[i % len(orders)]:
            start = time.perf_counter()
            await sides[name](i)
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
    return times


@dataclass
class PairedRuns:
    """Per-repetition medians of every side, for paired ratios."""

    medians: dict[str, list[float]] = field(default_factory=dict)

    def add(self, times: dict[str, list[float]]) -> None:
        for name, values in times.items():
            self.medians.setdefault(name, []).append(median(values))

    def ratios(self, side: str, baseline: str) -> list[float]:
        return [d / b for d, b in zip(self.medians[side], self.medians[baseline], strict=True)]

    def ms(self, side: str) -> float:
        return median(self.medians[side]) * 1e3


def overhead_row(
    key: str, measure: str, runs: PairedRuns, baseline: str, goal: float | None, detail: list[str]
) -> Row:
    """One ratio row: perdure over `baseline`."""
    ratios = runs.ratios("perdure", baseline)
    ratio = median(ratios)
    return Row(
        key,
        measure,
        f"{ratio:.2f}x",
        f"<= {goal}x" if goal else "report",
        verdict(ratio <= goal) if goal else "-",
        spread(ratios),
        [f"{runs.ms('perdure'):.3f} vs {runs.ms(baseline):.3f} ms/step (perdure vs baseline)", *detail],
    )


async def prepare_sides(
    storage: DurableExecutionStorage, sides: Sequence[str], tag: str, total: int
) -> dict[str, list[tuple[ExecutionRecord, StepRecord]]]:
    """One leased execution per side (created through the API) and its prepared records."""
    prepared: dict[str, list[tuple[ExecutionRecord, StepRecord]]] = {}
    for side in sides:
        eid = f"{tag}-{side}-{uuid.uuid4().hex[:8]}"
        owner = f"bench:{os.getpid()}:{side}"
        initial, pairs = step_records(eid, owner, total)
        await storage.save_state_async(initial)
        await storage.acquire_lease_async(eid, owner, 3600)
        prepared[side] = pairs
    return prepared


async def check_read_back(
    storage: DurableExecutionStorage,
    prepared: dict[str, list[tuple[ExecutionRecord, StepRecord]]],
    label: str,
) -> None:
    """Every side's writes, raw ones included, must read back through perdure's API."""
    for side, pairs in prepared.items():
        eid = pairs[0][0].execution_id
        head = await storage.load_state_async(eid)
        journal = await storage.load_steps_async(eid)
        if head is None or head.next_seq != len(pairs) or len(journal) != len(pairs):
            raise RuntimeError(f"{label} {side}: the API reads back {len(journal)} of {len(pairs)} steps")


def durable_op(storage: DurableExecutionStorage, pairs: list[tuple[ExecutionRecord, StepRecord]]) -> StepOp:
    """perdure's side: `append_step_async` of prepared records (perdure encodes them)."""

    async def op(i: int) -> None:
        head, step = pairs[i]
        await storage.append_step_async(head, step)

    return op


def redis_multi_op(client: Any, prefix: str, pairs: list[tuple[ExecutionRecord, StepRecord]]) -> StepOp:
    """Raw MULTI/EXEC with the same keys and bytes as perdure's append (no fence or seq check)."""
    eid = pairs[0][0].execution_id
    journal, head_key = f"{prefix}journal:{eid}", f"{prefix}head:{eid}"
    all_key, status_key = f"{prefix}idx:all", f"{prefix}idx:status:success"
    rows = [(encode_head(h), b"json:" + encode_step(s), micros(h.updated_at)) for h, s in pairs]

    async def op(i: int) -> None:
        head_bytes, entry, score = rows[i]
        async with client.pipeline(transaction=True) as pipe:
            pipe.rpush(journal, entry)
            pipe.hset(head_key, mapping={"c": b"json", "d": head_bytes, "s": b"success"})
            pipe.zadd(all_key, {eid: score})
            pipe.zadd(status_key, {eid: score})
            await pipe.execute()

    return op


def redis_lua_op(script: Any, prefix: str, pairs: list[tuple[ExecutionRecord, StepRecord]]) -> StepOp:
    """perdure's own append script invoked raw: same KEYS and ARGV, pre-encoded."""
    eid = pairs[0][0].execution_id
    keys = [
        f"{prefix}head:{eid}",
        f"{prefix}journal:{eid}",
        f"{prefix}lease:{eid}",
        f"{prefix}idx:all",
        f"{prefix}idx:expiry",
        *(f"{prefix}idx:status:{s.value}" for s in ExecutionStatus),
    ]
    args = [
        [
            eid,
            head.lease_owner or "",
            "json",
            encode_head(head),
            head.status.value,
            str(micros(head.updated_at)),
            "0",
            str(step.seq),
            b"json:" + encode_step(step),
        ]
        for head, step in pairs
    ]

    async def op(i: int) -> None:
        reply = await script(keys=keys, args=args[i])
        if reply[0] != b"ok":
            raise RuntimeError(f"raw script refused step {i}: {reply!r}")

    return op


async def bench_redis_steps(settings: Settings, url: str, report: Report) -> None:
    """Section 1 on Redis: `append_step_async` vs MULTI/EXEC and vs the same script raw."""
    import redis.asyncio as aioredis

    from perdure.storage import redis as redis_backend

    prefix = f"{namespace()}:"
    storage = redis_backend.RedisDurableStorage(url=url, prefix=prefix)
    client = aioredis.Redis.from_url(url)
    lua = getattr(redis_backend, "_LUA_APPEND", None)
    script = client.register_script(lua) if isinstance(lua, str) else None
    total = settings.step_count + settings.step_warmup
    runs = PairedRuns()
    sizes = ""
    try:
        for rep in range(settings.step_reps):
            names = ["perdure", "multi"] + (["lua"] if script is not None else [])
            prepared = await prepare_sides(storage, names, f"r{rep}", total)
            head, step = prepared["multi"][0]
            sizes = f"head {len(encode_head(head))} B + journal entry {len(encode_step(step))} B per step"
            sides = {
                "perdure": durable_op(storage, prepared["perdure"]),
                "multi": redis_multi_op(client, prefix, prepared["multi"]),
            }
            if script is not None:
                sides["lua"] = redis_lua_op(script, prefix, prepared["lua"])
            runs.add(await interleave(sides, total, settings.step_warmup))
            await check_read_back(storage, prepared, "redis")
    finally:
        await storage.close_async()
        await client.aclose()
        await drop_redis_prefix(url, prefix)
    report.rows.append(
        overhead_row(
            "1a",
            "Redis: append_step vs raw MULTI/EXEC (RPUSH+HSET+2 ZADD)",
            runs,
            "multi",
            1.5,
            [f"{sizes} (200 B result)", "baseline skips perdure's lease fence and seq check (see method)"],
        )
    )
    if script is not None:
        report.rows.append(
            overhead_row(
                "1b",
                "Redis: append_step vs the same Lua script via raw EVALSHA",
                runs,
                "lua",
                1.5,
                ["same server work: perdure's client-side cost only"],
            )
        )
    else:
        report.skip("1b", "Redis: append_step vs raw EVALSHA", "perdure.storage.redis._LUA_APPEND not found")


def pg_params(pairs: list[tuple[ExecutionRecord, StepRecord]]) -> list[dict[str, Any]]:
    """The parameters perdure's append statement gets, pre-encoded."""
    return [
        {
            "id": head.execution_id,
            "status": head.status.value,
            "updated": head.updated_at,
            "created": head.created_at,
            "codec": "json",
            "payload": encode_head(head),
            "owner": head.lease_owner,
            "step_id": step.execution_id,
            "seq": step.seq,
            "kind": step.kind.value,
            "name": step.name,
            "key": step.key,
            "step_codec": "json",
            "step_payload": encode_step(step),
        }
        for head, step in pairs
    ]


def pg_same_op(conn: Any, append_sql: str, pairs: list[tuple[ExecutionRecord, StepRecord]]) -> StepOp:
    """Raw psycopg running the backend's own one-statement append with the same parameters."""
    params = pg_params(pairs)

    async def op(i: int) -> None:
        async with conn.cursor(binary=True) as cur:
            await cur.execute(append_sql, params[i])
            if not await cur.fetchall():
                raise RuntimeError(f"raw append refused step {i}")

    return op


def pg_txn_op(
    conn: Any, insert_sql: str, save_sql: str, pairs: list[tuple[ExecutionRecord, StepRecord]]
) -> StepOp:
    """Raw psycopg: INSERT journal + fenced UPSERT head as two statements in one transaction."""
    params = pg_params(pairs)

    async def op(i: int) -> None:
        async with conn.transaction(), conn.cursor(binary=True) as cur:
            await cur.execute(insert_sql, params[i])
            await cur.execute(save_sql, params[i])
            if not await cur.fetchall():
                raise RuntimeError(f"raw upsert refused step {i}")

    return op


async def bench_postgres_mode(
    settings: Settings, dsn: str, prefix: str, mode: str, report: Report, keys: tuple[str, str]
) -> None:
    """Section 1 on PostgreSQL at one `synchronous_commit` setting."""
    import psycopg

    from perdure.storage.postgres import PostgresDurableStorage

    mode_dsn = dsn if mode == "on" else with_query(dsn, options="-c%20synchronous_commit%3Doff")
    storage = PostgresDurableStorage(mode_dsn, table_prefix=prefix)
    await storage.get_stats_async()  # creates the tables
    sql = getattr(storage, "_sql", None)
    append_sql, save_sql = getattr(sql, "append", None), getattr(sql, "save", None)
    if not isinstance(append_sql, str) or not isinstance(save_sql, str):
        await storage.close_async()
        for key in keys:
            report.skip(key, f"PostgreSQL {mode}", "PostgresDurableStorage._sql.append/save not found")
        return
    insert_sql = (
        f"INSERT INTO {prefix}steps (execution_id, seq, kind, name, key, codec, payload) VALUES "
        f"(%(step_id)s, %(seq)s, %(kind)s, %(name)s, %(key)s, %(step_codec)s, %(step_payload)s)"
    )
    conn = await psycopg.AsyncConnection.connect(mode_dsn, autocommit=True)
    total = settings.step_count + settings.step_warmup
    runs = PairedRuns()
    try:
        row = await (await conn.execute("SHOW synchronous_commit")).fetchone()
        if row is None or row[0] != mode:
            raise RuntimeError(f"synchronous_commit is {row!r} on the raw connection, wanted {mode}")
        for rep in range(settings.step_reps):
            prepared = await prepare_sides(storage, ["perdure", "same", "txn"], f"{mode}{rep}", total)
            sides = {
                "perdure": durable_op(storage, prepared["perdure"]),
                "same": pg_same_op(conn, append_sql, prepared["same"]),
                "txn": pg_txn_op(conn, insert_sql, save_sql, prepared["txn"]),
            }
            runs.add(await interleave(sides, total, settings.step_warmup))
            await check_read_back(storage, prepared, "postgres")
    finally:
        await conn.close()
        await storage.close_async()
    goal = 1.5 if mode == "on" else None
    label = f"synchronous_commit={mode}"
    report.rows.append(
        overhead_row(
            keys[0],
            f"PostgreSQL ({label}): append_step vs raw same statement",
            runs,
            "same",
            goal,
            ["one CTE statement on both sides: perdure's client-side cost only"],
        )
    )
    report.rows.append(
        overhead_row(
            keys[1],
            f"PostgreSQL ({label}): append_step vs raw INSERT+UPSERT txn",
            runs,
            "txn",
            goal,
            ["raw: BEGIN; INSERT journal; UPSERT head; COMMIT (4 round trips)"],
        )
    )


async def bench_postgres_steps(settings: Settings, dsn: str, report: Report) -> None:
    """Section 1 on PostgreSQL: `append_step_async` vs raw psycopg, synchronous_commit on and off."""
    prefix = f"{namespace()}_"
    try:
        await bench_postgres_mode(settings, dsn, prefix, "on", report, ("1c", "1d"))
        await bench_postgres_mode(settings, dsn, prefix, "off", report, ("1e", "1f"))
    finally:
        await drop_postgres_prefix(dsn, prefix)


# ---- bulk loaders (sections 2 and 3) -------------------------------------------------------------


@dataclass(frozen=True)
class HeadRow:
    """A head as the backends store it: indexed columns plus the codec's bytes."""

    execution_id: str
    status: str
    created_at: datetime
    updated_at: datetime
    payload: bytes


@dataclass(frozen=True)
class StepRow:
    """A journal entry as the backends store it."""

    execution_id: str
    seq: int
    kind: str
    name: str
    key: str
    payload: bytes


def load_sqlite(path: Path, table: str, heads: Sequence[HeadRow], steps: Sequence[StepRow]) -> None:
    """Insert rows straight into the SQLite backend's tables (created by the backend beforehand)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f"INSERT INTO {table} (execution_id, status, created_at, updated_at, schema_version, codec, "
            f"payload) VALUES (?, ?, ?, ?, 1, 'json', ?)",
            (
                (h.execution_id, h.status, sqlite_ts(h.created_at), sqlite_ts(h.updated_at), h.payload)
                for h in heads
            ),
        )
        conn.executemany(
            f"INSERT INTO {table}_steps (execution_id, seq, kind, name, key, codec, payload) "
            f"VALUES (?, ?, ?, ?, ?, 'json', ?)",
            ((s.execution_id, s.seq, s.kind, s.name, s.key, s.payload) for s in steps),
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()


async def load_postgres(dsn: str, prefix: str, heads: Sequence[HeadRow], steps: Sequence[StepRow]) -> None:
    """COPY rows straight into the PostgreSQL backend's tables, then VACUUM ANALYZE them."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with conn.transaction(), conn.cursor() as cur:
            columns = "execution_id, status, updated_at, created_at, codec, payload"
            async with cur.copy(f"COPY {prefix}heads ({columns}) FROM STDIN") as copy:
                for h in heads:
                    await copy.write_row(
                        (h.execution_id, h.status, h.updated_at, h.created_at, "json", h.payload)
                    )
            if steps:
                async with cur.copy(
                    f"COPY {prefix}steps (execution_id, seq, kind, name, key, codec, payload) FROM STDIN"
                ) as copy:
                    for s in steps:
                        await copy.write_row(
                            (s.execution_id, s.seq, s.kind, s.name, s.key, "json", s.payload)
                        )
        await conn.execute(f"VACUUM ANALYZE {prefix}heads")
        if steps:
            await conn.execute(f"VACUUM ANALYZE {prefix}steps")


async def load_redis(url: str, prefix: str, heads: Sequence[HeadRow], steps: Sequence[StepRow]) -> None:
    """Write head hashes, journals and the sorted-set indexes with pipelines, in the backend's layout."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    journals: dict[str, list[bytes]] = {}
    for s in sorted(steps, key=lambda s: (s.execution_id, s.seq)):
        journals.setdefault(s.execution_id, []).append(b"json:" + s.payload)
    try:
        chunk = 2000
        for start in range(0, len(heads), chunk):
            part = heads[start : start + chunk]
            async with client.pipeline(transaction=False) as pipe:
                by_status: dict[str, dict[str, int]] = {}
                for h in part:
                    pipe.hset(
                        f"{prefix}head:{h.execution_id}", mapping={"c": "json", "d": h.payload, "s": h.status}
                    )
                    by_status.setdefault(h.status, {})[h.execution_id] = micros(h.updated_at)
                    entries = journals.get(h.execution_id)
                    if entries:
                        pipe.rpush(f"{prefix}journal:{h.execution_id}", *entries)
                pipe.zadd(f"{prefix}idx:all", {h.execution_id: micros(h.updated_at) for h in part})
                for status, members in by_status.items():
                    pipe.zadd(f"{prefix}idx:status:{status}", members)
                await pipe.execute()
    finally:
        await client.aclose()


# ---- 2. list / stats at 100k ---------------------------------------------------------------------


def make_heads(count: int) -> list[HeadRow]:
    """`count` encoded heads with the status mix of `STATUS_MIX`, unique `updated_at`s, newest first."""
    rng = random.Random(20261123)
    statuses = [s for s, share in STATUS_MIX for _ in range(round(share * 1000))]
    now = utcnow().replace(microsecond=0)
    template = ExecutionRecord(
        execution_id="x",
        task=TaskSnapshot(
            description="Summarise the open support tickets of customer ACME and draft replies.",
            tools=[ToolRef(name="search_tickets", ref="app.tools:search_tickets"), ToolRef(name="draft")],
            model="openai:gpt-4o-mini",
            agent_name="support",
        ),
        attempts=1,
        metadata={"session_id": "s-0001", "user_id": "u-42"},
    )
    error = ErrorInfo(
        type="httpx.ReadTimeout",
        message="The read operation timed out",
        traceback='Traceback (most recent call last):\n  File "app/tools.py", line 41, in search_tickets\n'
        "    resp = await client.get(url)\nhttpx.ReadTimeout: The read operation timed out\n",
    )
    pending = PendingDecision(
        kind="approval", calls=[PendingCall(tool_call_id="call_1", tool_name="draft", args={"id": 7})]
    )
    rows: list[HeadRow] = []
    for i in range(count):
        status = statuses[rng.randrange(len(statuses))]
        updated = now - timedelta(seconds=i * 26, microseconds=rng.randrange(1, 999_999))
        created = updated - timedelta(seconds=rng.randrange(1, 600))
        steps = rng.randrange(2, 40)
        execution_id = f"{created:%Y%m%d%H%M%S}-{i:08x}"
        update: dict[str, Any] = {
            "execution_id": execution_id,
            "status": status,
            "created_at": created,
            "updated_at": updated,
            "step_index": steps - 1,
            "step_name": "model_request",
            "next_seq": steps,
            "usage": UsageTotals(requests=steps // 2, input_tokens=350 * steps, output_tokens=60 * steps),
        }
        if status is ExecutionStatus.FAILED:
            update["error"] = error
        elif status is ExecutionStatus.COMPLETED:
            update["output"] = f"Drafted {steps // 3} replies; 2 tickets need a human (ticket {i % 997})."
        elif status is ExecutionStatus.PAUSED:
            update["pending"] = pending
        record = template.model_copy(update=update)
        rows.append(HeadRow(execution_id, status.value, created, updated, encode_head(record)))
    return rows


def expected_stats(rows: Sequence[HeadRow]) -> dict[str, int]:
    """`by_status` the loaded rows must produce."""
    counts = Counter(r.status for r in rows)
    return {s.value: counts.get(s.value, 0) for s in ExecutionStatus}


def newest(rows: Sequence[HeadRow], status: str | None, limit: int) -> list[HeadRow]:
    """What `list_executions(status, limit)` must return, in order."""
    chosen = [r for r in rows if status is None or r.status == status]
    chosen.sort(key=lambda r: (r.updated_at, r.execution_id), reverse=True)
    return chosen[:limit]


async def verify_load(storage: DurableExecutionStorage, rows: Sequence[HeadRow], label: str) -> str:
    """Read the bulk-loaded rows back through the API; raise if anything differs."""
    stats = await storage.get_stats_async()
    if stats["by_status"] != expected_stats(rows) or stats["total_executions"] != len(rows):
        raise RuntimeError(f"{label}: get_stats {stats} != loaded {expected_stats(rows)}")
    checked = 0
    for status in (None, ExecutionStatus.FAILED.value):
        want = newest(rows, status, 50)
        got = await storage.list_executions_async(status=status, limit=50)
        if [h.execution_id for h in got] != [r.execution_id for r in want]:
            raise RuntimeError(f"{label}: list_executions(status={status}) returned other ids or order")
        for head, row in zip(got, want, strict=True):
            if head != decode_head(row.execution_id, row.payload):
                raise RuntimeError(f"{label}: {row.execution_id} reads back different from what was loaded")
            checked += 1
    for row in random.Random(7).sample(list(rows), min(25, len(rows))):
        head = await storage.load_state_async(row.execution_id)
        if head != decode_head(row.execution_id, row.payload):
            raise RuntimeError(f"{label}: load_state({row.execution_id}) differs from what was loaded")
        checked += 1
    return f"verified via API: stats exact, {checked} heads equal"


async def time_queries(storage: DurableExecutionStorage, runs: int) -> dict[str, list[float]]:
    """Median-able timings (seconds) of stats, list and list(failed), round-robin after warm-up."""
    queries: dict[str, Callable[[], Awaitable[Any]]] = {
        "stats": storage.get_stats_async,
        "list": lambda: storage.list_executions_async(limit=50),
        "failed": lambda: storage.list_executions_async(status=ExecutionStatus.FAILED, limit=50),
    }
    times: dict[str, list[float]] = {name: [] for name in queries}
    for _ in range(2):
        for query in queries.values():
            await query()
    gc.collect()
    for _ in range(runs):
        for name, query in queries.items():
            start = time.perf_counter()
            await query()
            times[name].append(time.perf_counter() - start)
    return times


QUERY_LABELS = {
    "stats": "get_stats_async()",
    "list": "list_executions_async(limit=50)",
    "failed": 'list_executions_async(status="failed", limit=50)',
}


def query_rows(
    report: Report, key: str, backend: str, count: int, times: dict[str, list[float]], goal: bool, check: str
) -> None:
    """The three rows of one backend's query timings."""
    for suffix, name in zip("abc", ("stats", "list", "failed"), strict=True):
        ms = [t * 1e3 for t in times[name]]
        value = median(ms)
        report.rows.append(
            Row(
                f"{key}{suffix}",
                f"{backend}, {count:,} executions: {QUERY_LABELS[name]}",
                f"{value:.1f} ms",
                "< 100 ms" if goal else "report",
                verdict(value < 100) if goal else "-",
                spread(ms, " ms", 1),
                [check] if suffix == "a" else [],
            )
        )


def sqlite_plans(storage: SQLiteDurableStorage) -> list[str]:
    """EXPLAIN QUERY PLAN of the backend's own list and stats statements."""
    conn = sqlite3.connect(storage.db_path)
    lines: list[str] = []
    try:
        list_sql = getattr(storage, "_sql_list", None)
        stats_sql = getattr(storage, "_sql_stats", None)
        if not isinstance(list_sql, str) or not isinstance(stats_sql, str):
            return ["SQLite: the backend's statements (_sql_list/_sql_stats) were not found; no plans."]
        statements = [
            ("stats", stats_sql, ()),
            ("list", list_sql.format(where=""), (50,)),
            ("failed", list_sql.format(where="WHERE status = ?"), ("failed", 50)),
        ]
        for name, sql, params in statements:
            plan = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
            lines.append(f"SQLite {QUERY_LABELS[name]}: " + "; ".join(str(row[-1]) for row in plan))
    finally:
        conn.close()
    return lines


async def postgres_plans(dsn: str, storage: Any) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the backend's own list and stats statements."""
    import psycopg

    sql = getattr(storage, "_sql", None)
    if sql is None or not all(
        isinstance(getattr(sql, a, None), str) for a in ("stats", "list_all", "list_status")
    ):
        return [
            "PostgreSQL: the backend's statements (_sql.stats/list_all/list_status) were not found; no plans."
        ]
    statements = [
        ("stats", sql.stats, ()),
        ("list", sql.list_all, (50,)),
        ("failed", sql.list_status, ("failed", 50)),
    ]
    lines: list[str] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for name, text, params in statements:
            cur = await conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {text}", params)
            plan = [str(row[0]).strip() for row in await cur.fetchall()]
            lines.append(f"PostgreSQL {QUERY_LABELS[name]}: " + " | ".join(plan))
    return lines


async def bench_queries(settings: Settings, found: Servers, tmp: Path, report: Report) -> None:
    """Section 2: bulk-load `settings.heads` heads into each backend, verify, time stats and list."""
    progress(f"  encoding {settings.heads:,} heads ...")
    rows = make_heads(settings.heads)
    sizes = [len(r.payload) for r in rows]
    report.notes.append(
        f"Section 2 heads: {len(rows):,}, {median(sizes):.0f} B median encoded size "
        f"({min(sizes)}-{max(sizes)} B), mix "
        + ", ".join(f"{s.value} {share:.0%}" for s, share in STATUS_MIX)
    )
    count = len(rows)

    # SQLite
    progress("  SQLite: bulk load ...")
    path = tmp / "list.db"
    storage = SQLiteDurableStorage(path, table_name="bench")
    started = time.perf_counter()
    load_sqlite(path, "bench", rows, [])
    loaded = time.perf_counter() - started
    check = await verify_load(storage, rows, "sqlite")
    times = await time_queries(storage, settings.query_runs)
    query_rows(
        report,
        "2s",
        "SQLite",
        count,
        times,
        True,
        f"{check}; bulk load {loaded:.1f} s (executemany + ANALYZE)",
    )
    report.plans.extend(sqlite_plans(storage))
    await storage.close_async()
    path.unlink()

    # PostgreSQL
    if found.postgres_dsn:
        from perdure.storage.postgres import PostgresDurableStorage

        progress("  PostgreSQL: bulk load ...")
        prefix = f"{namespace()}_"
        pg = PostgresDurableStorage(found.postgres_dsn, table_prefix=prefix)
        try:
            await pg.get_stats_async()  # creates the tables and indexes
            started = time.perf_counter()
            await load_postgres(found.postgres_dsn, prefix, rows, [])
            loaded = time.perf_counter() - started
            check = await verify_load(pg, rows, "postgres")
            times = await time_queries(pg, settings.query_runs)
            query_rows(
                report,
                "2p",
                "PostgreSQL",
                count,
                times,
                True,
                f"{check}; bulk load {loaded:.1f} s (COPY + VACUUM ANALYZE)",
            )
            report.plans.extend(await postgres_plans(found.postgres_dsn, pg))
        finally:
            await pg.close_async()
            await drop_postgres_prefix(found.postgres_dsn, prefix)
    else:
        report.skip("2p", "PostgreSQL list/stats", found.postgres_note)

    # Redis (context only)
    if found.redis_url:
        from perdure.storage.redis import RedisDurableStorage

        progress("  Redis: bulk load ...")
        prefix = f"{namespace()}:"
        rs = RedisDurableStorage(url=found.redis_url, prefix=prefix)
        try:
            started = time.perf_counter()
            await load_redis(found.redis_url, prefix, rows, [])
            loaded = time.perf_counter() - started
            check = await verify_load(rs, rows, "redis")
            times = await time_queries(rs, settings.query_runs)
            query_rows(
                report, "2r", "Redis", count, times, False, f"{check}; bulk load {loaded:.1f} s (pipelines)"
            )
        finally:
            await rs.close_async()
            await drop_redis_prefix(found.redis_url, prefix)
    else:
        report.skip("2r", "Redis list/stats", found.redis_note)


# ---- 3. workers ----------------------------------------------------------------------------------


async def make_interrupted(count: int, tmp: Path) -> tuple[list[HeadRow], list[StepRow], float]:
    """Run the app `count` times to its simulated crash on a source SQLite store; return its rows."""
    path = tmp / "source.db"
    storage = SQLiteDurableStorage(path, table_name="src", synchronous="NORMAL")
    started = time.perf_counter()
    for i in range(count):
        await backends_app.interrupt(storage, f"w{i:05d}-{uuid.uuid4().hex[:6]}")
    elapsed = time.perf_counter() - started
    await storage.close_async()
    conn = sqlite3.connect(path)
    try:
        heads = [
            HeadRow(eid, status, parse_sqlite_ts(created), parse_sqlite_ts(updated), bytes(payload))
            for eid, status, created, updated, payload in conn.execute(
                "SELECT execution_id, status, created_at, updated_at, payload FROM src "
                "WHERE codec = 'json' AND lease_owner IS NULL"
            )
        ]
        steps = [
            StepRow(eid, seq, kind, name, key, bytes(payload))
            for eid, seq, kind, name, key, payload in conn.execute(
                "SELECT execution_id, seq, kind, name, key, payload FROM src_steps WHERE codec = 'json'"
            )
        ]
    finally:
        conn.close()
    path.unlink()
    if len(heads) != count or len(steps) != count * backends_app.UNITS_INTERRUPTED:
        raise RuntimeError(f"source store holds {len(heads)} heads and {len(steps)} steps, expected {count}")
    return heads, steps, elapsed


@dataclass
class Drain:
    """What one drain by N worker processes took."""

    workers: int
    executions: int
    seconds: float
    startup: float
    per_worker: list[int]
    skips: int
    """Candidates a worker passed over because another worker had taken (or finished) them."""
    cpu: float
    """CPU seconds the worker processes used between the start signal and their exit."""
    load: float
    """1-minute load average of the machine when the drain started."""
    check: str
    ok: bool
    errors: list[str]

    @property
    def rate(self) -> float:
        """Executions per second from the start signal to the last worker's exit."""
        return self.executions / self.seconds


def spawn_workers(
    url: str, n: int, concurrency: int, run_dir: Path, ledger: Path
) -> list[subprocess.Popen[str]]:
    """Start `n` benchmark worker processes (`backends_app.py worker ...`), each logging to a file."""
    env = {**os.environ, backends_app.LEDGER_ENV: str(ledger)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    procs = []
    for i in range(n):
        command = [
            sys.executable,
            str(HERE / "backends_app.py"),
            "worker",
            url,
            str(run_dir),
            str(i),
            str(concurrency),
        ]
        with (run_dir / f"worker-{i}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(command, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
            )
    return procs


def read_ledger(ledger: Path) -> list[tuple[str, str, int, float]]:
    """(execution id, idempotency key, pid, time) of every executed side effect."""
    entries = []
    for path in ledger.glob("ledger-*"):
        for line in path.read_text().splitlines():
            eid, key, pid, at = line.split()
            entries.append((eid, key, int(pid), float(at)))
    return entries


async def verify_drain(
    storage: DurableExecutionStorage, ids: Sequence[str], entries: Sequence[tuple[str, str, int, float]]
) -> tuple[bool, str]:
    """Every execution completed exactly once: head, journal and side-effect ledger agree."""
    problems: list[str] = []
    stats = await storage.get_stats_async()
    if stats["by_status"]["completed"] != len(ids):
        problems.append(f"stats: {stats['by_status']}")
    per_execution = Counter(eid for eid, _, _, _ in entries)
    twice = [eid for eid, n in per_execution.items() if n > 1]
    missing = [eid for eid in ids if per_execution.get(eid, 0) == 0]
    if twice:
        problems.append(f"{len(twice)} side effects ran more than once (e.g. {twice[0]})")
    if missing:
        problems.append(f"{len(missing)} executions never ran their side effect (e.g. {missing[0]})")
    bad_heads = bad_journals = 0
    for eid in ids:
        head = await storage.load_state_async(eid)
        if (
            head is None
            or head.status is not ExecutionStatus.COMPLETED
            or head.attempts != 2
            or head.next_seq != backends_app.UNITS_DONE
        ):
            bad_heads += 1
            continue
        journal = await storage.load_steps_async(eid)
        keys = [s.key for s in journal]
        if len(journal) != backends_app.UNITS_DONE or len(set(keys)) != len(keys):
            bad_journals += 1
    if bad_heads:
        problems.append(f"{bad_heads} heads not completed with attempts == 2 and 5 units")
    if bad_journals:
        problems.append(f"{bad_journals} journals without exactly 5 unique units")
    if problems:
        return False, "NOT exactly once: " + "; ".join(problems)
    return (
        True,
        f"all {len(ids)} completed exactly once (attempts == 2, 5 unique journal units, 1 side effect each)",
    )


@dataclass
class Target:
    """A fresh namespace of one backend holding a copy of the interrupted executions."""

    storage: DurableExecutionStorage
    url: str
    cleanup: Callable[[], Awaitable[None]] | None = None


async def copy_target(
    backend: str, found: Servers, run_dir: Path, heads: Sequence[HeadRow], steps: Sequence[StepRow]
) -> Target:
    """Bulk-copy the interrupted executions into a fresh namespace of `backend`."""
    if backend == "sqlite":
        path = run_dir / "drain.db"
        storage = SQLiteDurableStorage(path, table_name="bench")
        load_sqlite(path, "bench", heads, steps)
        return Target(storage, f"sqlite:///{path}?table=bench")
    if backend == "postgres":
        from perdure.storage.postgres import PostgresDurableStorage

        assert found.postgres_dsn is not None
        dsn, prefix = found.postgres_dsn, f"{namespace()}_"
        pg = PostgresDurableStorage(dsn, table_prefix=prefix)
        await pg.get_stats_async()
        await load_postgres(dsn, prefix, heads, steps)
        return Target(pg, with_query(dsn, table_prefix=prefix), lambda: drop_postgres_prefix(dsn, prefix))
    from perdure.storage.redis import RedisDurableStorage

    assert found.redis_url is not None
    url, prefix = found.redis_url, f"{namespace()}:"
    rs = RedisDurableStorage(url=url, prefix=prefix)
    await load_redis(url, prefix, heads, steps)
    return Target(rs, with_query(url, prefix=prefix), lambda: drop_redis_prefix(url, prefix))


async def drain(
    backend: str,
    found: Servers,
    tmp: Path,
    heads: Sequence[HeadRow],
    steps: Sequence[StepRow],
    workers: int,
    concurrency: int,
    timeout: float,
) -> Drain:
    """Copy the interrupted executions into a fresh namespace and drain them with `workers` processes."""
    run_dir = tmp / f"{backend}-{workers}"
    ledger = run_dir / "ledger"
    ledger.mkdir(parents=True)
    target = await copy_target(backend, found, run_dir, heads, steps)
    procs: list[subprocess.Popen[str]] = []
    try:
        before = await target.storage.get_stats_async()
        if before["by_status"]["success"] != len(heads):
            raise RuntimeError(f"{backend}: the copied executions read back as {before['by_status']}")
        spawned = time.perf_counter()
        procs = spawn_workers(target.url, workers, concurrency, run_dir, ledger)
        deadline = spawned + timeout
        while len(list(run_dir.glob("ready-*"))) < workers:
            if any(p.poll() is not None for p in procs) or time.perf_counter() > deadline:
                raise RuntimeError(f"{backend}: a worker exited or hung before the start signal")
            await asyncio.sleep(0.01)
        started, load = time.perf_counter(), os.getloadavg()[0]
        (run_dir / "go").touch()
        while any(p.poll() is None for p in procs) and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        seconds = time.perf_counter() - started
        errors: list[str] = []
        per_worker: list[int] = []
        cpu, skips = 0.0, 0
        for i, proc in enumerate(procs):
            if proc.poll() is None:
                proc.kill()
                errors.append(f"worker {i} still ran after {timeout:.0f} s: killed")
            out, _ = proc.communicate()
            lines = [line for line in out.splitlines() if line.startswith("{")]
            result = json.loads(lines[-1]) if lines else {}
            per_worker.append(int(result.get("recovered", 0)))
            cpu += float(result.get("cpu_seconds", 0.0))
            skips += int(result.get("skipped", 0))
            if proc.returncode != 0 or result.get("failed"):
                tail = (run_dir / f"worker-{i}.log").read_text(errors="replace").strip().splitlines()[-2:]
                errors.append(
                    f"worker {i} exited {proc.returncode}: {result.get('failed') or ' / '.join(tail)}"
                )
        ok, check = await verify_drain(target.storage, [h.execution_id for h in heads], read_ledger(ledger))
        return Drain(
            workers=workers,
            executions=len(heads),
            seconds=seconds,
            startup=started - spawned,
            per_worker=per_worker,
            skips=skips,
            cpu=cpu,
            load=load,
            check=check,
            ok=ok and not errors,
            errors=errors,
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        await target.storage.close_async()
        if target.cleanup is not None:
            await target.cleanup()


async def bench_workers(
    settings: Settings, found: Servers, tmp: Path, concurrency: int, report: Report
) -> None:
    """Section 3: 1, 2, 4 worker processes draining the interrupted executions, per backend."""
    progress(f"  creating {settings.executions:,} interrupted executions (real runs, SQLite source) ...")
    heads, steps, created = await make_interrupted(settings.executions, tmp)
    report.notes.append(
        f"Section 3 source: {len(heads):,} executions really run to their simulated crash in {created:.1f} s "
        f"({created / len(heads) * 1e3:.0f} ms each, SQLite NORMAL), {len(steps):,} journal entries, copied "
        f"byte for byte into a fresh namespace for every drain. Workers: Worker API (what `perdure worker "
        f"--once` runs), --concurrency {concurrency}, defaults otherwise; storage URLs with default settings "
        f"(SQLite synchronous=FULL; PostgreSQL fsync=on, synchronous_commit=on)."
    )
    backends = [
        ("sqlite", "SQLite", None),
        ("postgres", "PostgreSQL", None if found.postgres_dsn else found.postgres_note),
        ("redis", "Redis", None if found.redis_url else found.redis_note),
    ]
    for code, (backend, label, missing) in zip("spr", backends, strict=True):
        if missing is not None:
            report.skip(f"3{code}", f"{label}: worker drain", missing)
            continue
        results: list[Drain] = []
        for workers in settings.worker_counts:
            progress(f"  {label}: {workers} worker(s) draining {len(heads):,} ...")
            result = await drain(
                backend, found, tmp, heads, steps, workers, concurrency, settings.worker_timeout
            )
            progress(f"    {result.rate:.1f} exec/s, {result.seconds:.1f} s")
            results.append(result)
        base = results[0].rate
        for result in results:
            report.rows.append(
                Row(
                    f"3{code}{result.workers}",
                    f"{label}: {result.workers} worker process{'es' if result.workers > 1 else ''} "
                    f"drain {len(heads):,}",
                    f"{result.rate:.1f} exec/s",
                    "exactly once; scaling reported",
                    verdict(result.ok),
                    f"{result.rate / base:.2f}x vs 1",
                    [
                        f"{result.seconds:.1f} s from the start signal to the last exit (start-up before it: "
                        f"{result.startup:.1f} s); executions per worker: "
                        + "/".join(str(n) for n in result.per_worker)
                        + f" ({result.skips} candidates skipped: taken or finished by another worker)",
                        f"worker CPU {result.cpu / result.executions * 1e3:.0f} ms per execution, "
                        f"{result.cpu / result.seconds:.2f} of the {os.cpu_count()} cores busy with workers; "
                        f"load average {result.load:.1f} at the start",
                        result.check,
                        *result.errors,
                    ],
                )
            )


# ---- output --------------------------------------------------------------------------------------


def render(report: Report, settings: Settings, found: Servers, elapsed: float) -> str:
    """The result table, query plans and notes."""
    lines = [
        "",
        "perdure server backends: ratios measured side by side in this run "
        f"({'--quick' if settings.quick else 'full'}, {elapsed:.0f} s)",
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs "
        f"(shared with other work: expect noise), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "load average (1 min) per section, before -> after: " + ", ".join(report.loads),
        f"redis: {found.redis_note or 'not used'}",
        f"postgres: {found.postgres_note or 'not used'}",
        "ratio = median over repetitions of per-repetition medians; spread = min-max over repetitions",
        "",
    ]
    header = ("#", "measure", "this run", "goal", "verdict", "spread")
    table = [header] + [(r.key, r.measure, r.value, r.goal, r.verdict, r.spread) for r in report.rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    sep = "  "
    lines.append(sep.join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    lines.append(sep.join("-" * w for w in widths))
    for r in report.rows:
        cells = (r.key, r.measure, r.value, r.goal, r.verdict, r.spread)
        lines.append(sep.join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        lines += [" " * (widths[0] + len(sep)) + "   " + d for d in r.detail]
    failed = [r.key for r in report.rows if r.verdict == "FAIL"]
    skipped = [r.key for r in report.rows if r.verdict == "SKIP"]
    lines.append("")
    lines.append(f"FAILED GOALS: {', '.join(failed)}" if failed else "All goals met.")
    if skipped:
        lines.append(f"SKIPPED: {', '.join(skipped)}")
    if report.plans:
        lines += ["", "Query plans (section 2, the backends' own statements):"]
        lines += [f"  {plan}" for plan in report.plans]
    if report.notes:
        lines += ["", "Notes:"] + [f"  {note}" for note in report.notes]
    return "\n".join(lines)


async def main_async(settings: Settings, args: argparse.Namespace) -> str:
    """Run the selected sections and return the rendered report."""
    started = time.perf_counter()
    sections = {int(s) for s in args.sections.split(",") if s.strip()}
    report = Report()
    with servers(args.redis_url, args.postgres_dsn, {"redis", "postgres"}) as found:
        for note in (found.redis_note, found.postgres_note):
            progress(note)
        with tempfile.TemporaryDirectory(prefix="perdure-bench-") as tmp_name:
            tmp = Path(tmp_name)
            plan: list[tuple[int, str, Callable[[], Awaitable[None]]]] = [
                (1, "(1) per-step overhead", lambda: bench_steps(settings, found, report)),
                (
                    2,
                    f"(2) list/stats over {settings.heads:,} executions",
                    lambda: bench_queries(settings, found, tmp, report),
                ),
                (
                    3,
                    f"(3) workers draining {settings.executions:,} executions",
                    lambda: bench_workers(settings, found, tmp, args.worker_concurrency, report),
                ),
            ]
            for number, label, run in plan:
                if number not in sections:
                    continue
                t0, load0 = time.perf_counter(), load_average()
                progress(f"running {label} ...")
                await run()
                progress(f"  done in {time.perf_counter() - t0:.1f} s")
                report.loads.append(f"({number}) {load0} -> {load_average()}")
    report.notes.append(
        f"{os.cpu_count()} CPUs shared with other work: worker scaling is bounded by the cores (the "
        f"servers and the benchmark run on the same cores), so more processes than cores cannot add "
        f"much; SQLite also serializes writers on one file lock."
    )
    return render(report, settings, found, time.perf_counter() - started)


async def bench_steps(settings: Settings, found: Servers, report: Report) -> None:
    """Section 1 on both servers (skipped with the reason when one is unavailable)."""
    if found.redis_url:
        await bench_redis_steps(settings, found.redis_url, report)
    else:
        report.skip("1a", "Redis step overhead", found.redis_note)
    if found.postgres_dsn:
        await bench_postgres_steps(settings, found.postgres_dsn, report)
    else:
        report.skip("1c", "PostgreSQL step overhead", found.postgres_note)


def main(argv: list[str] | None = None) -> int:
    """Entry point; always returns 0 (benchmarks are not tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller counts; under a minute")
    parser.add_argument("--redis-url", help="use this Redis server instead of starting one")
    parser.add_argument("--postgres-dsn", help="use this PostgreSQL database instead of starting a server")
    parser.add_argument("--sections", default="1,2,3", help="comma-separated subset of 1,2,3")
    parser.add_argument(
        "--worker-concurrency", type=int, default=1, help="--concurrency of each worker process (section 3)"
    )
    args = parser.parse_args(argv)
    print(asyncio.run(main_async(Settings.make(args.quick), args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
