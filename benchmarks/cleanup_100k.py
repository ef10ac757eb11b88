"""Retention at scale: `perdure cleanup` over 100,000 old executions while another execution runs.

Run it with ``.venv/bin/python benchmarks/cleanup_100k.py`` (a few minutes on a small machine;
``--count 20000`` for a quick look, ``--backends sqlite,postgres,redis`` to choose). Without
``--redis-url`` / ``--postgres-dsn`` it starts throw-away servers on 127.0.0.1 with the test
suite's launch helpers (``tests/support/server_redis.py``, ``tests/support/server_postgres.py``).

Method, per backend:

1. **Load.** ``--count`` executions (default 100,000), last updated 30 to 31 days ago, each with a
   head (status ``completed``, or ``failed`` for every tenth) and two journal entries, are written
   fast, bypassing the API: SQLite ``executemany`` in one transaction of the backend's own rows,
   PostgreSQL ``COPY``, Redis through the API (16 writes in flight; the backend offers no faster
   path that keeps its indexes right). Only the cleanup below goes through the public API.
2. **A running execution.** A second process opens its own storage on the same data, creates an
   execution, takes its lease and appends one journal entry (head + entry, one atomic write) every
   5 ms, timing each append. It runs for 3 s before the cleanup (the baseline) and during it.
3. **Cleanup.** The CLI's own code path (``perdure.cli._cleanup._clean``: one
   ``count_old_executions_async``, then ``cleanup_old_executions_async(limit=500)`` until a batch comes
   back short), older than 7 days, keeping ``failed`` (``--keep-status failed``). Measured: total time,
   the growth of this process's RSS during the cleanup (peak of a 5 ms sampler minus the RSS
   before) and tracemalloc's peak of Python allocations during it.
4. **Check.** Every ``completed`` execution is gone, every ``failed`` one and the running one are
   left, and the running execution's journal holds every entry it appended, in order.

Printed: one table, one row per backend: executions deleted, seconds, deletions per second, RSS
growth, tracemalloc peak, and the running execution's append latency p50/p99/max before and
during the cleanup (and how many appends it made during it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (ROOT / "src", ROOT / "tests", HERE):
    if _path.is_dir() and str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from perdure.cli._cleanup import _clean  # noqa: E402
from perdure.codec import encode_head, encode_step  # noqa: E402
from perdure.records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord  # noqa: E402
from perdure.storage import DurableExecutionStorage, storage_from_url  # noqa: E402

KEEP = frozenset({"failed"})
WRITER_ID = "bench-running"
PAGE = 4096


# ---- records -------------------------------------------------------------------------------------


def _records(index: int, now: datetime) -> tuple[ExecutionRecord, list[StepRecord]]:
    """Execution `index`: 30 days old plus `index` seconds, completed (every tenth failed), 2 entries."""
    when = now - timedelta(days=30, seconds=index)
    status = ExecutionStatus.FAILED if index % 10 == 0 else ExecutionStatus.COMPLETED
    eid = f"old-{index:07d}"
    head = ExecutionRecord(
        execution_id=eid,
        status=status,
        created_at=when,
        updated_at=when,
        next_seq=2,
        step_index=1,
        step_name="tool:lookup",
        agent_name="bench",
        model="test",
    )
    steps = [
        StepRecord(
            execution_id=eid,
            seq=seq,
            kind=StepKind.MODEL_REQUEST if seq == 0 else StepKind.TOOL_CALL,
            name="model" if seq == 0 else "tool:lookup",
            key=f"k{seq}",
            result={"i": index, "text": "x" * 150},
        )
        for seq in range(2)
    ]
    return head, steps


def _count_kept(count: int) -> int:
    return len(range(0, count, 10))


# ---- loading -------------------------------------------------------------------------------------


def load_sqlite(path: Path, count: int) -> None:
    from perdure.storage import SQLiteDurableStorage

    store = SQLiteDurableStorage(path, synchronous="NORMAL")
    store.save_state(ExecutionRecord(execution_id="schema-probe"))
    store.delete_state("schema-probe")
    now = datetime.now(UTC)
    conn = store._open()  # type: ignore[attr-defined]  # a plain connection of the backend
    try:
        conn.execute("BEGIN IMMEDIATE")
        for start in range(0, count, PAGE):
            heads, steps = [], []
            for index in range(start, min(start + PAGE, count)):
                head, entries = _records(index, now)
                heads.append(store._head_row(head))  # type: ignore[attr-defined]
                steps.extend(store._step_row(step) for step in entries)  # type: ignore[attr-defined]
            conn.executemany(store._sql_upsert_head, heads)  # type: ignore[attr-defined]
            conn.executemany(store._sql_insert_step, steps)  # type: ignore[attr-defined]
        tombstones = f"{store.table_name}_tombstones"
        conn.execute(f"DELETE FROM {tombstones}")  # the probe's
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()
        store.close()


def load_postgres(dsn: str, prefix: str, count: int) -> None:
    import psycopg

    from perdure.storage.postgres import PostgresDurableStorage

    store = PostgresDurableStorage(dsn, table_prefix=prefix)
    store.save_state(ExecutionRecord(execution_id="schema-probe"))
    store.delete_state("schema-probe")
    store.close()
    now = datetime.now(UTC)
    codec = store.codec
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DELETE FROM {prefix}tombstones")
        with conn.cursor() as cur:
            cols = "execution_id, status, updated_at, created_at, codec, payload"
            with cur.copy(f"COPY {prefix}heads ({cols}) FROM STDIN") as copy:
                for index in range(count):
                    head, _ = _records(index, now)
                    name, payload = codec.encode(encode_head(head))
                    copy.write_row(
                        (
                            head.execution_id,
                            head.status.value,
                            head.updated_at,
                            head.created_at,
                            name,
                            payload,
                        )
                    )
            cols = "execution_id, seq, kind, name, key, codec, payload"
            with cur.copy(f"COPY {prefix}steps ({cols}) FROM STDIN") as copy:
                for index in range(count):
                    _, entries = _records(index, now)
                    for step in entries:
                        name, payload = codec.encode(encode_step(step))
                        copy.write_row(
                            (step.execution_id, step.seq, step.kind.value, step.name, step.key, name, payload)
                        )
        conn.execute(f"VACUUM ANALYZE {prefix}heads")
        conn.execute(f"VACUUM ANALYZE {prefix}steps")


async def load_redis(url: str, count: int) -> None:
    store = storage_from_url(url)
    now = datetime.now(UTC)
    gate = asyncio.Semaphore(16)  # within the client's connection pool

    async def one(index: int) -> None:
        head, steps = _records(index, now)
        async with gate:
            await store.save_state_async(head.model_copy(update={"next_seq": 0}))
            await store.append_steps_async(head, steps)

    try:
        for start in range(0, count, 2000):
            await asyncio.gather(*(one(index) for index in range(start, min(start + 2000, count))))
    finally:
        await store.close_async()


# ---- the running execution (another process) -----------------------------------------------------


async def writer(url: str, out: Path, stop: Path) -> None:
    """Append a journal entry every 5 ms to a leased execution until `stop` exists; log each latency."""
    store = storage_from_url(url)
    await store.save_state_async(ExecutionRecord(execution_id=WRITER_ID))
    await store.acquire_lease_async(WRITER_ID, "bench-writer", 600)
    seq = 0
    samples: list[tuple[float, float]] = []
    out.with_suffix(".ready").write_text("1")
    while not stop.exists():
        head = ExecutionRecord(
            execution_id=WRITER_ID, next_seq=seq + 1, step_index=seq, lease_owner="bench-writer"
        )
        step = StepRecord(
            execution_id=WRITER_ID, seq=seq, kind=StepKind.TOOL_CALL, name="t", key=f"k{seq}", result=seq
        )
        began = time.time()
        await store.append_step_async(head, step)
        samples.append((began, time.time() - began))
        seq += 1
        await asyncio.sleep(0.005)
    out.write_text(json.dumps(samples))
    await store.close_async()


@contextlib.contextmanager
def running_execution(url: str) -> Iterator[Path]:
    """Start the writer process; yields the file its samples go to once it stopped."""
    work = Path(tempfile.mkdtemp(prefix="perdure-bench-writer-"))
    out, stop = work / "samples.json", work / "stop"
    proc = subprocess.Popen([sys.executable, __file__, "--writer", url, str(out), str(stop)])
    try:
        for _ in range(600):
            if out.with_suffix(".ready").exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        yield out
    finally:
        stop.write_text("1")
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        shutil.copy(out, out.with_name("kept.json")) if out.exists() else None


# ---- measuring -----------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples this process's RSS every 5 ms in a thread; `peak` is the highest seen."""

    def __init__(self) -> None:
        self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


@dataclass
class Row:
    backend: str
    loaded: int = 0
    load_s: float = 0.0
    deleted: int = 0
    seconds: float = 0.0
    rss_growth: int = 0
    py_peak: int = 0
    before: list[float] = field(default_factory=list)
    during: list[float] = field(default_factory=list)
    checks: str = ""


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(row: Row, url: str, count: int) -> None:
    with running_execution(url) as samples_file:
        await asyncio.sleep(3.0)  # baseline: the running execution alone
        store: DurableExecutionStorage = storage_from_url(url)
        try:
            rss0 = _rss()
            tracemalloc.start()
            with PeakRss() as peak:
                began = time.time()
                result = await _clean(store, 7.0, KEEP, 500, None)
                ended = time.time()
            _, row.py_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            row.rss_growth = peak.peak - rss0
            row.deleted, row.seconds = result["deleted"], ended - began
            await asyncio.sleep(0.5)
        finally:
            await store.close_async()
    samples = json.loads(samples_file.with_name("kept.json").read_text())
    row.before = [lat for t, lat in samples if began - 3.0 <= t < began]
    row.during = [lat for t, lat in samples if began <= t <= ended]
    # Check what is left.
    store = storage_from_url(url)
    try:
        stats = await store.get_stats_async()
        journal = await store.load_steps_async(WRITER_ID)
        by = stats["by_status"]
        ok = (
            by["completed"] == 0
            and by["failed"] == _count_kept(count)
            and [s.seq for s in journal] == list(range(len(journal)))
            and len(journal) == len(samples)
            and row.deleted == count - _count_kept(count)
        )
        row.checks = "ok" if ok else f"MISMATCH {by} journal={len(journal)} samples={len(samples)}"
    finally:
        await store.close_async()


# ---- servers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def server_urls(args: argparse.Namespace, wanted: set[str]) -> Iterator[dict[str, str]]:
    urls: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if "redis" in wanted:
            if args.redis_url:
                urls["redis"] = args.redis_url
            else:
                from support.server_redis import launch_redis

                directory = Path(tempfile.mkdtemp(prefix="perdure-bench-redis-"))
                stack.callback(shutil.rmtree, directory, True)
                server = launch_redis(directory)
                stack.callback(server.stop)
                urls["redis"] = server.url
        if "postgres" in wanted:
            if args.postgres_dsn:
                urls["postgres"] = args.postgres_dsn
            else:
                from support.server_postgres import _remove, _start_server

                pg = _start_server()
                stack.callback(_remove, pg)
                urls["postgres"] = pg.dsn
        yield urls


async def run(args: argparse.Namespace) -> list[Row]:
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows = []
    tag = os.urandom(3).hex()
    with (
        server_urls(args, set(wanted)) as servers,
        tempfile.TemporaryDirectory(prefix="perdure-bench-") as tmp,
    ):
        for backend in wanted:
            row = Row(backend)
            started = time.monotonic()
            if backend == "sqlite":
                path = Path(tmp) / "cleanup.db"
                load_sqlite(path, args.count)
                url = f"sqlite:///{path}?synchronous=NORMAL"
            elif backend == "postgres":
                prefix = f"bench{tag}_"
                load_postgres(servers["postgres"], prefix, args.count)
                url = f"{servers['postgres']}?table_prefix={prefix}"
            elif backend == "redis":
                url = f"{servers['redis']}?prefix=bench{tag}:"
                await load_redis(url, args.count)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            row.loaded, row.load_s = args.count, time.monotonic() - started
            print(
                f"{backend}: loaded {args.count} executions in {row.load_s:.1f}s; cleaning up...", flush=True
            )
            await measure(row, url, args.count)
            rows.append(row)
            _print([row])
    return rows


def _print(rows: list[Row]) -> None:
    print(
        f"{'backend':<9}{'deleted':>8}{'secs':>7}{'del/s':>8}{'RSS+MB':>8}{'pyMB':>6}"
        f"{'p50 before/during ms':>22}{'p99 before/during ms':>22}{'max during':>11}{'n':>6}  check"
    )
    for r in rows:
        print(
            f"{r.backend:<9}{r.deleted:>8}{r.seconds:>7.1f}{r.deleted / max(r.seconds, 1e-9):>8.0f}"
            f"{r.rss_growth / 2**20:>8.1f}{r.py_peak / 2**20:>6.1f}"
            f"{_pct(r.before, 0.5):>11.2f}/{_pct(r.during, 0.5):<10.2f}"
            f"{_pct(r.before, 0.99):>11.2f}/{_pct(r.during, 0.99):<10.2f}"
            f"{max(r.during, default=float('nan')) * 1000:>11.1f}{len(r.during):>6}  {r.checks}",
            flush=True,
        )


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--writer":
        asyncio.run(writer(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgres,redis")
    parser.add_argument("--redis-url")
    parser.add_argument("--postgres-dsn")
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    print()
    print(f"cleanup of {args.count} old executions (10% failed, kept), CLI batches of 500:")
    _print(rows)
    print(
        "(latency: append_step of a leased execution in another process, one every 5 ms; "
        "n = appends during the cleanup)"
    )


if __name__ == "__main__":
    main()
